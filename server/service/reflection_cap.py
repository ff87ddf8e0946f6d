"""gRPC reflection, capped: at most N reflection streams at once (they need no key, so an
uncapped server would let anyone hold as many as they like). Off unless the owner turns it on
(`--reflection-streams N`)."""

from __future__ import annotations

import grpc

REFLECTION_PREFIX = "/grpc.reflection."


class ReflectionCap(grpc.aio.ServerInterceptor):
    def __init__(self, max_streams: int):
        self.max_streams = max_streams
        self.open = 0  # counted on the event loop: no lock

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(REFLECTION_PREFIX):
            return handler
        behavior = handler.stream_stream

        async def capped(requests, context):
            if self.open >= self.max_streams:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"reflection: {self.open} streams open, the server's limit is "
                    f"{self.max_streams} (--reflection-streams)",
                )
            self.open += 1
            try:
                async for response in behavior(requests, context):
                    yield response
            finally:
                self.open -= 1

        return grpc.stream_stream_rpc_method_handler(
            capped, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
