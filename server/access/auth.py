"""The credential check: a server interceptor in front of every graytune.v1 method.

A call carries `authorization: Bearer <secret>` metadata; the interceptor finds its key (or
answers UNAUTHENTICATED) and hands the caller to the servicer through a context variable.
Health checking and reflection stay open, as load balancers and tools expect.
"""
from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass
from typing import Optional

import grpc

from graytune.server.access.credentials import ApiKey, KeyFile

log = logging.getLogger("graytune.server")
PROTECTED_PREFIX = "/graytune.v1."


@dataclass(frozen=True)
class Caller:
    id: str  # the key id: owns the graphs it creates, names it in logs and metrics
    tier: str
    key: Optional[ApiKey] = None  # None in development mode


CURRENT_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("graytune_caller")


class AuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, keys: Optional[KeyFile], dev_tier: Optional[str] = None, metrics=None):
        if (keys is None) == (dev_tier is None):
            raise ValueError("give a key file, or a tier for development mode, not both")
        self.keys, self.dev_tier, self.metrics = keys, dev_tier, metrics

    def caller_for(self, metadata) -> Optional[Caller]:
        if self.keys is None:
            return Caller("dev", self.dev_tier)
        value = dict(metadata).get("authorization", "")
        scheme, _, secret = value.partition(" ")
        key = self.keys.authenticate(secret.strip()) if scheme.lower() == "bearer" else None
        return None if key is None else Caller(key.id, key.tier, key)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(PROTECTED_PREFIX):
            return handler
        caller = self.caller_for(handler_call_details.invocation_metadata)
        if caller is None:
            method = handler_call_details.method.rsplit("/", 1)[-1]
            log.warning("call method=%s caller=- status=UNAUTHENTICATED", method)
            if self.metrics is not None:
                self.metrics.requests.labels(method, "-", "UNAUTHENTICATED").inc()
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED,
                             "authorization: missing or unknown API key; send 'authorization: Bearer <key>' "
                             "(the graytune CLI and OracleClient send $GRAYTUNE_API_KEY)")
        return _as_caller(handler, caller)


def _as_caller(handler: grpc.RpcMethodHandler, caller: Caller) -> grpc.RpcMethodHandler:
    if handler.response_streaming:
        behavior = handler.stream_stream or handler.unary_stream

        def streaming(request, context):
            token = CURRENT_CALLER.set(caller)
            try:
                yield from behavior(request, context)
            finally:
                CURRENT_CALLER.reset(token)
        return _replace(handler, streaming)
    behavior = handler.unary_unary or handler.stream_unary

    def unary(request, context):
        token = CURRENT_CALLER.set(caller)
        try:
            return behavior(request, context)
        finally:
            CURRENT_CALLER.reset(token)
    return _replace(handler, unary)


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str):
    def refuse(request, context):
        context.abort(code, message)
    return _replace(handler, refuse)


def _replace(handler: grpc.RpcMethodHandler, behavior) -> grpc.RpcMethodHandler:
    """The same kind of handler, with the same (de)serialisers, running `behavior`."""
    make = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}
    return make[(handler.request_streaming, handler.response_streaming)](
        behavior, request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer)
