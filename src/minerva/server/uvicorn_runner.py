"""uvicorn with a graceful SIGTERM: drain the backend first, then let uvicorn close up."""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn

from minerva.server.state import ServerState

logger = logging.getLogger("minerva.server")


class DrainingServer(uvicorn.Server):
    """The first SIGTERM/SIGINT drains (503 for new requests, in-flight ones run for up to
    ``shutdown_timeout`` s, the rest are aborted), then exits 0; a second one exits at once."""

    def __init__(self, config: uvicorn.Config, state: ServerState, shutdown_timeout: float):
        super().__init__(config)
        self.state = state
        self.shutdown_timeout = shutdown_timeout
        self.exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if sockets:  # uvicorn says where it listens only for sockets it bound itself
            host, port = sockets[0].getsockname()[:2]
            address = f"[{host}]" if ":" in host else host
            logging.getLogger("uvicorn.error").info(
                "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", address, port
            )

    def handle_exit(self, sig, frame) -> None:
        if self._draining or self._loop is None:
            super().handle_exit(sig, frame)  # a second signal, or not started yet: stop now
            return
        # Not super(): uvicorn would re-raise the signal at exit and the exit code be -15.
        self._draining = True
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain()))

    async def _drain(self) -> None:
        self.state.draining = True
        backends = self.state.backends()
        busy = sum(b.stats().num_requests_in_flight for b in backends)
        logger.info("shutting down: draining %d request(s), up to %ss", busy, self.shutdown_timeout)
        counts = await asyncio.gather(*(b.drain(self.shutdown_timeout) for b in backends))
        if sum(counts):
            logger.info("aborted %d request(s) at the shutdown timeout", sum(counts))
        self.should_exit = True  # uvicorn then waits for the responses to finish sending

    def fail(self, error: BaseException | str) -> None:
        """The model failed to load or the engine stopped: stop with exit code 1."""
        self.exit_code = 1
        self.should_exit = True

    def run_until_exit(self, sockets: list[socket.socket] | None = None) -> int:
        """Serve (on ``sockets`` when given, already bound) until exit; the exit code (1 also
        when the engine had to be left inside a hung step)."""
        self.run(sockets=sockets)
        if self.state.engine_stuck or self.state.engine_failure:
            self.exit_code = 1
        return self.exit_code
