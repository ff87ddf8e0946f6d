"""The gradient oracle: the backbone behind its two questions, with no transport in sight.

  embed(inputs)             -> embeddings                        (no graph kept)
  forward(inputs)           -> embeddings, handle                (graph kept for one backward)
  backward(handle, dL/dE)   -> dL/d(every continuous input sent)

Inputs are validated before they reach the backbone; parameters never require grad, so the
only gradients autograd can produce are the ones w.r.t. the caller's own inputs.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from graytune.pixel_adapter import PixelAdapterSpec
from graytune.server.compute import validation
from graytune.server.compute.backbone import Backbone
from graytune.server.compute.call_context import CallContext
from graytune.server.compute.device import DeviceQueue, Work
from graytune.server.compute.errors import HandleExpired, InputError, OverLimit
from graytune.server.compute.graph_memory import graph_bytes
from graytune.server.compute.graph_store import GraphGroup, GraphStore, HeldGraph
from graytune.server.compute.limits import Limits

Tensors = dict[str, torch.Tensor]
IMAGE_FORWARD = "image-forward"  # the device-queue group of mergeable image Forward calls


class GradientOracle:
    def __init__(self, backbone: Backbone, limits: Limits, merge_batches: bool = True):
        """`merge_batches`: image Forward calls pending at once, from any callers, run as one
        batch (and their Backward calls too); without it each runs alone, by the same code."""
        self.backbone = backbone
        self.limits = limits
        self.merge_batches = merge_batches
        self.store = GraphStore(
            limits.max_graph_bytes, limits.handle_ttl_seconds, max_bytes_per_owner=limits.max_graph_bytes_per_key
        )
        self.device = DeviceQueue(max_samples=limits.max_batch)
        # Calls in the last merged image Forward batch: the next batch waits briefly for as
        # many, so concurrent trainers stay in step rather than alternate small batches.
        self._forward_calls = 1
        # Told (method, calls) for every merged image batch: the metrics' view of merging.
        self.on_merged_batch: Callable[[str, int], None] = lambda method, calls: None

    def prepare(
        self,
        tower: str,
        tensors: Tensors,
        texts: Sequence[str] = (),
        grad_inputs: Sequence[str] | None = None,
        prompt_template: str = "",
        pixel_adapter: PixelAdapterSpec | None = None,
    ) -> Request:
        """Checks a request and binds its discrete inputs, on the caller's thread: bad input
        and tokenising never take the device. `grad_inputs` (Forward only): the inputs to
        differentiate, default every floating-point input. `prompt_template`: `texts` are class
        names and "context_delta" candidate contexts (see context_prompts.py). `pixel_adapter`:
        "pixels" are uint8, run through the adapter whose parameters are the request's other
        tensors. The header's fields passed `validation.check_header` (and
        `check_pixel_adapter`) and the tensors' names `check_names` where the request came in
        (the service)."""
        b, limits = self.backbone, self.limits
        if prompt_template and tower != "text":
            raise InputError("prompt_template: the image tower takes no template")
        if tower == "image":
            if texts:
                raise InputError("texts: the image tower takes no texts")
            validation.check_image(tensors, b.image_size, limits, pixel_adapter)
        elif tower == "text" and prompt_template:
            validation.check_context(
                tensors, texts, b.text.templates.context_tokens(prompt_template), b.text.token_width, limits
            )
        elif tower == "text":
            validation.check_text(tensors, texts, b.text.context_length, b.text.token_width, b.text.vocab_size, limits)
        else:
            raise InputError(f"tower: must be IMAGE or TEXT, got {tower!r}")
        spec = b.image if tower == "image" else b.text
        validation.check_deep_prompts(tensors, tower, spec.prompt_depth, spec.token_width, limits)
        wanted = () if grad_inputs is None else validation.check_grad_inputs(grad_inputs, tensors)
        ids = None
        if prompt_template:
            ids = b.text.templates.token_ids(prompt_template, list(texts))
        elif tower == "text":
            extra = tensors.get("extra_tokens")
            num_extra = 0 if extra is None else extra.shape[0]
            if texts:
                ids = b.text.tokenize(list(texts), num_extra)
            else:
                ids = tensors["token_ids"]
                b.text.check_room(ids, num_extra)
        # float32 and page-locked (on a GPU) here, so the device thread only starts the copy.
        floats = {n: b.staged(t.float()) for n, t in tensors.items() if t.is_floating_point()}
        samples = validation.batch_size(tensors) or len(texts)
        if pixel_adapter is not None:
            return Request(tower, floats, b.staged(tensors["pixels"]), tuple(wanted), samples, pixel_adapter)
        return Request(tower, floats, ids, tuple(wanted), samples)

    def _encoder(self, request: Request) -> Callable[[Tensors], torch.Tensor]:
        """The tower's forward as a function of the float inputs, with discrete inputs bound."""
        b = self.backbone
        spec = request.pixel_adapter
        if spec is not None:
            pixels, names = request.discrete, list(spec.parameter_shapes())
            assert pixels is not None  # uint8 pixels, bound by `prepare`
            return lambda x: b.encode_adapted_image(pixels, spec, {n: x[n] for n in names}, x.get("deep_prompts"))
        if request.tower == "image":
            return lambda x: b.encode_image(x["pixels"], x.get("deep_prompts"))
        token_ids = request.discrete
        assert token_ids is not None  # bound for the text tower (`prepare`)
        return lambda x: b.encode_text(
            token_ids, x.get("shift"), x.get("extra_tokens"), x.get("deep_prompts"), x.get("context_delta")
        )

    def receiving(self, tower: str | None):
        """Context for receiving a Forward call's tensors: a merged image batch waits for them."""
        if tower == "image" and self.merge_batches:
            return self.device.arriving(IMAGE_FORWARD)
        return contextlib.nullcontext()

    # `context`: the call's deadline, cancellation and arrival token, and where the oracle tells
    # the call's time on the device; without one, the call has no deadline and is never cancelled.
    def embed(
        self,
        request: Request,
        owner: str = "",
        out_dtype: torch.dtype = torch.float32,
        context: CallContext | None = None,
    ) -> torch.Tensor:
        """-> (B, E) embeddings."""
        return self._on_device(owner, context or CallContext(), self._embed, request, out_dtype)

    def forward(
        self, request: Request, owner: str, out_dtype: torch.dtype = torch.float32, context: CallContext | None = None
    ) -> tuple[str, torch.Tensor]:
        """-> (handle, (B, E) embeddings); the graph stays for one `backward`."""
        context = context or CallContext()
        # Merged with other callers' calls: float pixels alone (callers' prompts and adapters differ).
        if request.tower == "image" and set(request.floats) == {"pixels"}:
            call = _Call(request.floats, owner, out_dtype, context)
            group = IMAGE_FORWARD if self.merge_batches else call  # a group of its own: alone
            return self.device.submit(
                owner,
                Work(
                    group=group,
                    run_group=self._forward_images,
                    payload=call,
                    samples=request.samples,
                    expected=self._forward_calls,
                ),
                context.deadline,
                context.scope,
                context.arrival,
            )
        return self._on_device(owner, context, self._forward, request, owner, out_dtype)

    def backward(
        self,
        handle: str,
        tensors: Tensors,
        owner: str,
        out_dtype: torch.dtype = torch.float32,
        context: CallContext | None = None,
    ) -> Tensors:
        """dL/dE (B, E) -> {input name: dL/d input}, for the inputs chosen at forward."""
        context = context or CallContext()
        grad = _gradient_of_embeddings(tensors)
        graph = self.store.peek(handle, owner)
        if graph is None:
            self.store.take(handle, owner)  # raises, saying why the caller has no such graph
        assert graph is not None  # take raised
        validation.check_float("embeddings", grad, tuple(graph.output.shape))  # off the device
        call = _Call({"embeddings": grad}, owner, out_dtype, context, handle=handle)
        if graph.group is not None:  # one backward for the merged batch
            return self.device.submit(
                owner,
                Work(
                    group=id(graph.group),
                    run_group=self._backward_group,
                    payload=call,
                    samples=0,
                    expected=self.store.held(graph.group.handles),
                    hold_device=True,
                ),
                context.deadline,
                context.scope,
            )
        return self._on_device(owner, context, self._backward, call)

    def _on_device(self, owner: str, context: CallContext, fn, *args):
        """Runs fn on the device thread in the caller's turn (see DeviceQueue)."""

        def timed():
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                context.device_seconds = time.perf_counter() - start

        return self.device.submit(owner, Work(run=timed), context.deadline, context.scope, context.arrival)

    def _forward_images(self, works: list[Work]) -> list:
        """Image Forward calls of several callers as one batch; a graph slice (handle) each."""
        start = time.perf_counter()
        self._forward_calls = len(works)
        self.on_merged_batch("Forward", len(works))
        # every call was checked by `prepare` on its own thread
        leaves = [w.payload.tensors["pixels"].float().requires_grad_() for w in works]
        with torch.enable_grad(), graph_bytes(self.backbone.parameter_storages) as kept:
            on_device = [self.backbone.to_device(leaf) for leaf in leaves]  # each copied from its pinned pages
            output = self.backbone.encode_image(torch.cat(on_device))  # (sum of B, E)
        kept.add(*leaves, output)
        ends = itertools.accumulate(len(leaf) for leaf in leaves)
        rows = [slice(end - len(leaf), end) for leaf, end in zip(leaves, ends)]
        group = GraphGroup(output)  # one graph: its bytes are held until its last member goes
        held = self.store.put_all(
            [
                HeldGraph({"pixels": leaf}, output[r], kept.nbytes, w.payload.owner, group=group, rows=r)
                for w, leaf, r in zip(works, leaves, rows)
            ]
        )
        group.handles = [h for h in held if isinstance(h, str)]
        results = [
            h if isinstance(h, OverLimit) else (h, output[r].detach().to("cpu", w.payload.out_dtype))
            for w, h, r in zip(works, held, rows)
        ]
        _record_time(works, start)
        return results

    def _backward_group(self, works: list[Work]) -> list:
        """Backward calls on one merged batch: a single backward pass, each caller's rows."""
        start, taken = time.perf_counter(), []
        results: dict[Work, Tensors | InputError | HandleExpired] = {}
        self.on_merged_batch("Backward", len(works))
        for work in works:
            call = work.payload
            try:  # each gradient was checked by `backward` on its caller's thread
                taken.append((work, self.store.take(call.handle, call.owner), call.tensors["embeddings"]))
            except (InputError, HandleExpired) as e:  # gone since: expired, or taken by a twin call
                results[work] = e
        if taken:
            group = taken[0][1].group
            assert group is not None  # the works of a group are members of a merged batch
            grad_output = torch.zeros_like(group.output)  # rows of callers not in this pass stay 0
            for _, graph, grad in taken:
                grad_output[graph.rows] = grad.to(grad_output)
            # The graph stays for members still to come; it is freed with the last of them.
            grads = torch.autograd.grad(
                group.output, [g.inputs["pixels"] for _, g, _ in taken], grad_output, retain_graph=True
            )
            for (work, _, _), grad in zip(taken, grads):
                results[work] = {"pixels": grad.to(work.payload.out_dtype)}
        _record_time(works, start)
        return [results[w] for w in works]

    def _embed(self, request, out_dtype):
        encode = self._encoder(request)
        with torch.inference_mode():
            return encode({n: t.float() for n, t in request.floats.items()}).to("cpu", out_dtype)

    def _forward(self, request, owner, out_dtype):
        encode = self._encoder(request)
        floats = {n: t.float().requires_grad_(n in request.grad_inputs) for n, t in request.floats.items()}
        with torch.enable_grad(), graph_bytes(self.backbone.parameter_storages) as kept:
            output = encode(floats)  # (B, E)
        leaves = {n: floats[n] for n in request.grad_inputs}
        kept.add(*leaves.values(), output)
        handle = self.store.put(HeldGraph(leaves, output, kept.nbytes, owner))
        return handle, output.detach().to("cpu", out_dtype)

    def _backward(self, call: _Call):
        graph = self.store.take(call.handle, call.owner)
        grads = torch.autograd.grad(
            graph.output, list(graph.inputs.values()), call.tensors["embeddings"].to(graph.output), allow_unused=True
        )
        return {
            name: (torch.zeros_like(leaf) if g is None else g).to(call.out_dtype)
            for (name, leaf), g in zip(graph.inputs.items(), grads)
        }


@dataclass(frozen=True)
class Request:
    """A checked request: float inputs by name, discrete inputs bound."""

    tower: str  # "image" or "text"
    # The continuous inputs (pixels, shift, extra_tokens, deep_prompts, context_delta, a pixel
    # adapter's parameters).
    floats: Tensors
    # (B, L) token ids for the text tower, (C, L) template prompts; uint8 (B, 3, H, W) pixels
    # with a pixel adapter.
    discrete: torch.Tensor | None
    grad_inputs: tuple[str, ...]  # Forward: the inputs whose gradients Backward returns
    samples: int  # B, what the call is charged (P for context_delta)
    pixel_adapter: PixelAdapterSpec | None = None


@dataclass(eq=False)
class _Call:
    """One caller's request, as a merged batch needs it."""

    tensors: Tensors
    owner: str
    out_dtype: torch.dtype
    context: CallContext
    handle: str = ""


def _gradient_of_embeddings(tensors: Tensors) -> torch.Tensor:
    """Backward's one input; its tensors' names passed `validation.check_names` in the service."""
    if "embeddings" not in tensors:
        raise InputError("embeddings: missing; Backward needs dLoss/dEmbeddings (B, E)")
    return tensors["embeddings"]


def _record_time(works: list[Work], start: float) -> None:
    """Every caller of a merged batch is told the batch's device time."""
    seconds = time.perf_counter() - start
    for work in works:
        work.payload.context.device_seconds = seconds
