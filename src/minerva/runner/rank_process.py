"""The main function of a tensor-parallel rank other than 0, in its own spawned process.

It joins the process group, builds its Worker (its share of the model, meeting rank 0 in the
start-up collectives), says "ready", then repeats each call the engine makes on rank 0 (the
messages of runner/parallel_worker.py) in the same order, so the collectives pair up. Any error
is sent back as text before the process exits non-zero; a closed pipe (the engine is gone)
ends it quietly.
"""

from __future__ import annotations

import os
import pickle
import traceback
from collections import deque
from multiprocessing.connection import Connection

from minerva.config import EngineConfig


def run_rank(
    config: EngineConfig,
    rank: int,
    world_size: int,
    device_type: str,
    port: int,
    timeout: float,
    conn: Connection,
) -> None:
    from minerva.distributed import destroy_process_group, init_process_group  # noqa: PLC0415
    from minerva.runner.worker import Worker  # noqa: PLC0415 - spawned: import here

    try:
        conn.send(("started", None))  # imported and running: rank 0 may join the group
        init_process_group(rank, world_size, device_type, port, timeout)
        worker = Worker(config, rank, world_size, progress=False)
        conn.send(("ready", None))
        _serve(worker, conn)
        destroy_process_group()
    except (EOFError, KeyboardInterrupt):
        pass  # the engine closed its end: nothing to report to
    except BaseException as e:  # noqa: BLE001 - reported to rank 0, then the process exits
        text = f"{type(e).__name__}: {e}"
        if os.environ.get("MINERVA_DEBUG"):
            text += "\n" + traceback.format_exc()
        try:
            conn.send(("error", text))
        except OSError:
            pass
        conn.close()
        os._exit(1)  # no interpreter teardown: the group's sockets close at once


def _serve(worker, conn: Connection) -> None:
    """Each message is one call rank 0 makes; launched steps are waited for in order."""
    launched: deque = deque()
    while True:
        kind, payload = pickle.loads(conn.recv_bytes())
        if kind == "launch":
            launched.append(worker.launch(payload))
        elif kind == "sample":  # the latest launch, once the step before it was read
            worker.sample(launched[-1])
        elif kind == "wait":
            worker.wait(launched.popleft())
        elif kind == "score":
            worker.score(*payload)
        elif kind == "prompt_logprobs":
            worker.prompt_logprobs(*payload)
        elif kind == "stop":
            return
        else:
            raise RuntimeError(f"unknown message {kind!r} from rank 0")
