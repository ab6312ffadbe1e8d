import logging

from twisted.internet import defer

logger = logging.getLogger(__name__)


def run_as_background_process(desc, func, *args, bg_start_span=True, **kwargs):
    """Runs `func` without waiting; errors are logged, as Synapse does."""

    async def run():
        try:
            res = func(*args, **kwargs)
            if isinstance(res, defer.Deferred) or hasattr(res, "__await__"):
                return await res
            return res
        except Exception:
            logger.exception("Background process '%s' threw an exception", desc)

    return defer.ensureDeferred(run())


def wrap_as_background_process(desc):
    def wrapper(func):
        def inner(*args, **kwargs):
            return run_as_background_process(desc, func, *args, **kwargs)

        return inner

    return wrapper
