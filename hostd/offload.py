"""Blocking calls (Docker, disk) off the event loop, each in a thread of its own, each with a deadline.

No shared pool: a call that hangs (a stuck engine, a container that never answers) holds only its
own thread, never the slot another lease, the inventory or a control call needs. Past its deadline
the caller gets asyncio.TimeoutError and goes on; the thread finishes whenever the call returns
(docker-py's own socket timeout bounds that too).
"""
import asyncio
import threading

QUICK = 15.0   # inspect, signal, list
STOP = 60.0    # stop and remove a container
START = 300.0  # create and start a container (may unpack a large image)
MOVE = 1200.0  # a workspace moved to another lease: never given up before its own steps' limits are


async def call(fn, *args, timeout: float):
    """fn(*args) in a new daemon thread; its result, its exception, or TimeoutError after timeout."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # a late failure nobody awaits is not an error

    def settle(result, exc):
        if not fut.done():
            fut.set_exception(exc) if exc is not None else fut.set_result(result)

    def work():
        try:
            result, exc = fn(*args), None
        except BaseException as e:  # handed to the awaiting task, which decides
            result, exc = None, e
        try:
            loop.call_soon_threadsafe(settle, result, exc)
        except RuntimeError:
            pass  # the loop is gone (shutdown): nobody is waiting

    threading.Thread(target=work, daemon=True, name=f"offload-{getattr(fn, '__name__', 'call')}").start()
    return await asyncio.wait_for(asyncio.shield(fut), timeout)
