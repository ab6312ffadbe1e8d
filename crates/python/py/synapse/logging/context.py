from twisted.internet import defer


def make_deferred_yieldable(d):
    return d


def run_in_background(f, *args, **kwargs):
    try:
        res = f(*args, **kwargs)
    except Exception:
        return defer.fail()
    if isinstance(res, defer.Deferred):
        return res
    import inspect

    if inspect.isawaitable(res):
        return defer.ensureDeferred(res)
    return defer.succeed(res)


class PreserveLoggingContext:
    def __init__(self, *_a, **_k):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
