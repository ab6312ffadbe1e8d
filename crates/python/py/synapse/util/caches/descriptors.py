"""synapse.util.caches.descriptors: Synapse's `@cached` method decorator, for modules.

A decorated method's results are kept per argument tuple (its first `num_args` arguments after
`self`, all of them by default), at most `max_entries` per instance, oldest dropped first. The
method returns a Deferred, as Synapse's does, so callers `await` it either way; `invalidate`,
`invalidate_all` and `prefill` work as on Synapse.
"""

import functools
import inspect
from collections import OrderedDict

from twisted.internet import defer


class CachedFunction:
    """The type of a `@cached` method, for annotations (Synapse's `CachedFunction`)."""

    def __class_getitem__(cls, item):
        return cls


class _Descriptor:
    def __init__(self, orig, max_entries, num_args):
        self.orig = orig
        params = list(inspect.signature(orig).parameters)[1:]
        self.arg_names = params[:num_args] if num_args is not None else params
        self.max_entries = max_entries
        self.attr = "_myelin_cache_%s_%d" % (orig.__name__, id(self))
        functools.update_wrapper(self, orig)

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        cache = obj.__dict__.get(self.attr)
        if cache is None:
            cache = obj.__dict__[self.attr] = OrderedDict()
        signature = inspect.signature(self.orig)
        descriptor = self

        def key_of(args, kwargs):
            bound = signature.bind(obj, *args, **kwargs)
            bound.apply_defaults()
            return tuple(bound.arguments[n] for n in descriptor.arg_names)

        def remember(key, value):
            cache[key] = value
            cache.move_to_end(key)
            while len(cache) > descriptor.max_entries:
                cache.popitem(last=False)

        @functools.wraps(self.orig)
        def call(*args, **kwargs):
            key = key_of(args, kwargs)
            if key in cache:
                cache.move_to_end(key)
                return defer.succeed(cache[key])
            result = self.orig(obj, *args, **kwargs)
            d = defer.ensureDeferred(result) if inspect.isawaitable(result) else defer.maybeDeferred(lambda: result)

            def store(value):
                remember(key, value)
                return value

            d.addCallback(store)
            return d

        call.invalidate = lambda key: cache.pop(tuple(key), None) and None
        call.invalidate_all = cache.clear
        call.prefill = lambda key, value: remember(tuple(key), value)
        call.cache = cache
        call.num_args = len(self.arg_names)
        return call


def cached(*, max_entries=1000, num_args=None, uncached_args=None, tree=False, cache_context=False, iterable=False,
           prune_unread_entries=True, name=None):
    """Keeps the decorated method's results per arguments (Synapse's `@cached()`)."""

    def wrap(orig):
        return _Descriptor(orig, max_entries, num_args)

    return wrap
