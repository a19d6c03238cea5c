"""A deadline on uploading a request body (slow-drip clients): 408 in the API's error shape.

One deadline for the whole body, not per read, so a client that sends a byte every few seconds
cannot hold the request open. Once the body is in, ``receive`` is untouched: the routes wait
on it for the client's disconnect while they stream the answer.
"""

from __future__ import annotations

import asyncio

from minerva.server.api_errors import APIError


class BodyTimeoutMiddleware:
    """Raise a 408 APIError from ``receive`` when the body is not in after ``timeout`` s."""

    def __init__(self, app, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.timeout <= 0:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        body_done = False

        async def timed_receive():
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                body_done = True  # the 408 is the answer; later reads wait for the disconnect
                raise APIError(
                    408,
                    f"The request body did not arrive within {self.timeout:g} s "
                    "(body_timeout): send it at once",
                    code="body_timeout",
                    headers={"Connection": "close"},
                ) from None
            body_done = message["type"] != "http.request" or not message.get("more_body")
            return message

        await self.app(scope, timed_receive, send)
