"""The plugin manager: built-ins, entry points and runtime registration.

``get_plugin_manager()`` builds a fresh manager every call (tests use it);
``default_plugin_manager()`` is the cached one the public API and the CLI use,
and ``reset_plugin_manager()`` drops it.

Environment switches:

* ``THAWKIT_PLUGINS``: unset loads every ``thawkit`` entry point; empty loads
  none; ``a,b`` loads only the entry points (or distributions) named.
* ``THAWKIT_STRICT_PLUGINS=1``: a plugin that fails to import, register or
  contribute is an error instead of a warning.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, UnknownNameError

ENTRY_POINT_GROUP = "thawkit"

#: Built-in plugins (plugin name -> module), registered exactly like third-party ones, in this
#: order and before them. Core's fallbacks (``trylast``) answer only when no plugin does.
DEFAULT_PLUGINS: dict[str, str] = {
    "thawkit.torchvision": "thawkit.plugins.torchvision",
    "thawkit.timm": "thawkit.plugins.timm",
    "thawkit.python_source": "thawkit.plugins.python_source",
    "thawkit.optimizers": "thawkit.plugins.optimizers",
    "thawkit.strategy.head_only": "thawkit.plugins.strategies.head_only",
    "thawkit.strategy.last_block": "thawkit.plugins.strategies.last_block",
    "thawkit.strategy.gradual": "thawkit.plugins.strategies.gradual",
    "thawkit.strategy.full": "thawkit.plugins.strategies.full",
    "thawkit.strategy.pattern": "thawkit.plugins.strategies.pattern",
    "thawkit.strategy.bitfit": "thawkit.plugins.strategies.bitfit",
    "thawkit.strategy.norm_only": "thawkit.plugins.strategies.norm_only",
    "thawkit.train": "thawkit.plugins.train.plugin",
    "thawkit.schedules": "thawkit.plugins.train.schedules",
    "thawkit.commands": "thawkit.plugins.commands",
    "thawkit.coverage": "thawkit.plugins.coverage",
    "thawkit.fallbacks": "thawkit.fallbacks",
}


class PluginLoadWarning(UserWarning):
    """A third-party plugin failed and was skipped."""


def strict_plugins() -> bool:
    return os.environ.get("THAWKIT_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class Entry:
    """One registered name: the object, and the plugin that contributed it."""

    name: str
    obj: Any
    plugin: str


class Registry:
    """Names contributed by collector hooks; the core owns de-duplication.

    A plugin whose names are expensive to list (they come from a library that takes seconds
    to import) defers them: ``register.defer(contribute)``. ``contribute()`` returns
    ``(name, obj)`` pairs and runs only when a name no other plugin gives is asked for, or
    the whole list is read; its names never replace others.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._deferred: list[tuple[str, Callable[[], Iterable[tuple[str, Any]]]]] = []
        self.on_error: Callable[[str, str], None] | None = None

    @property
    def entries(self) -> dict[str, Entry]:
        self._resolve_deferred()
        return self._entries

    def add(self, name: str, obj: Any, plugin: str, replace: bool = False) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {self.kind} without a name: {obj!r}")
        old = self._entries.get(name)
        if old is not None and not replace:
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by plugin {old.plugin!r} and by plugin "
                f"{plugin!r}; rename one, or pass replace=True to override on purpose")
        self._entries[name] = Entry(name, obj, plugin)

    def defer(self, plugin: str, contribute: Callable[[], Iterable[tuple[str, Any]]]) -> None:
        self._deferred.append((plugin, contribute))

    def _resolve_deferred(self) -> None:
        while self._deferred:
            plugin, contribute = self._deferred.pop(0)
            try:
                for name, obj in contribute():
                    self.add(name, obj, plugin)
            except PluginError:
                raise
            except Exception as exc:  # one bad plugin must not break the rest
                if self.on_error is None:
                    raise
                self.on_error(plugin, f"its deferred {self.kind} names raised {type(exc).__name__}: "
                                      f"{exc}")

    def get(self, name: str, *, where: str | None = None) -> Any:
        found = self._entries.get(name)
        if found is not None:
            return found.obj
        try:
            return self.entries[name].obj
        except KeyError:
            raise UnknownNameError(self.kind, name, self.entries, where=where) from None

    def names(self) -> list[str]:
        return sorted(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self.entries


class ThawkitPluginManager(pluggy.PluginManager):
    """A pluggy manager with thawkit's hooks and registries built from its collector hooks."""

    def __init__(self) -> None:
        super().__init__("thawkit")
        self.add_hookspecs(hookspecs)
        self.hook.thawkit_add_hookspecs.call_historic(kwargs={"pm": self})
        self._registries: dict[str, Registry] = {}
        self.builtin_names: set[str] = set()
        self.load_errors: dict[str, str] = {}
        self._dist_of: dict[str, tuple[str | None, str | None]] = {}

    # Registries are rebuilt lazily whenever a plugin comes or goes.
    def register(self, plugin: object, name: str | None = None) -> str | None:
        out = super().register(plugin, name)
        self._registries.clear()
        return out

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        out = super().unregister(plugin, name)
        self._registries.clear()
        return out

    def registry(self, hook: str, kind: str,
                 unpack: Callable[..., tuple[str, Any]] | None = None) -> Registry:
        """The names contributed through collector hook ``hook`` (built once, until plugins change).

        Each plugin's implementation is called through pluggy, one plugin at a time in
        registration order, with a ``register`` callable that records which plugin gave
        each name. ``unpack(*args, **kw) -> (name, obj)`` reads ``register``'s arguments;
        the default takes ``register(name, obj)``. Plugins use this for hooks they add.
        """
        if hook in self._registries:
            return self._registries[hook]
        registry = Registry(kind)
        read = unpack or (lambda name, obj: (name, obj))
        order = [name for name, _ in self.list_name_plugin()]
        impls = sorted(getattr(self.hook, hook).get_hookimpls(),
                       key=lambda i: order.index(i.plugin_name))
        for impl in impls:
            plugin = impl.plugin_name
            others = [p for p in self.get_plugins() if p is not impl.plugin]

            def register(*args: Any, replace: bool = False, _plugin: str = plugin, **kw: Any) -> None:
                name, obj = read(*args, **kw)
                registry.add(name, obj, _plugin, replace=replace)

            def defer(contribute: Callable[[], Iterable[tuple[str, Any]]], _plugin: str = plugin) -> None:
                registry.defer(_plugin, contribute)

            register.defer = defer  # type: ignore[attr-defined]
            try:
                self.subset_hook_caller(hook, remove_plugins=others)(register=register)
            except PluginError:
                raise
            except Exception as exc:  # one bad plugin must not break the rest
                self._plugin_failed(plugin, f"{hook} raised {type(exc).__name__}: {exc}")
        registry.on_error = self._plugin_failed
        self._registries[hook] = registry
        return registry

    def _plugin_failed(self, plugin: str, error: str) -> None:
        if strict_plugins() or plugin in self.builtin_names:
            why = "" if plugin in self.builtin_names else " (THAWKIT_STRICT_PLUGINS is set)"
            raise PluginError(f"thawkit plugin {plugin!r} failed: {error}{why}")
        msg = f"thawkit plugin {plugin!r} failed and was skipped: {error}"
        self.load_errors[plugin] = error
        warnings.warn(msg, PluginLoadWarning, stacklevel=3)

    @property
    def strategies(self) -> Registry:
        """Strategy classes by name (``thawkit_register_strategies``)."""
        return self.registry("thawkit_register_strategies", "strategy",
                             lambda cls: (getattr(cls, "name", None), cls))

    @property
    def sources(self) -> Registry:
        """Backbone sources by name (``thawkit_register_sources``)."""
        return self.registry("thawkit_register_sources", "source")

    @property
    def optimizers(self) -> Registry:
        """Optimizer factories by name (``thawkit_register_optimizers``)."""
        return self.registry("thawkit_register_optimizers", "optimizer")

    @property
    def recipe_sections(self) -> Registry:
        """Recipe sections that plugins add (``thawkit_recipe_sections``)."""
        return self.registry("thawkit_recipe_sections", "recipe section")

    # ------------------------------------------------------------ loading
    def register_builtin(self, name: str, module_name: str) -> None:
        """Import and register one of :data:`DEFAULT_PLUGINS`."""
        self.builtin_names.add(name)
        self.register(importlib.import_module(module_name), name=name)

    def load_entrypoints(self, only: Iterable[str] | None = None) -> None:
        """Load third-party plugins from the ``thawkit`` entry-point group, each in its own try."""
        wanted = None if only is None else {n.strip() for n in only if n.strip()}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            if wanted is not None and ep.name not in wanted and dist_name not in wanted:
                continue
            if self.get_plugin(ep.name) is not None or self.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
                self.register(plugin, name=ep.name)
                self._dist_of[ep.name] = (dist_name, dist.version if dist is not None else None)
            except Exception as exc:
                self._plugin_failed(ep.name, f"{type(exc).__name__}: {exc} (entry point {ep.value})")

    def load_local(self, ref: str) -> object:
        """Register a plugin given as a module name or a ``.py`` file path."""
        try:
            if ref.endswith(".py") or os.sep in ref or "/" in ref:
                path = Path(ref)
                if not path.is_file():
                    raise PluginError(f"plugin file {ref!r} does not exist")
                # one module per file: two plugin files with the same name never collide
                digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
                mod_name = f"thawkit_local_{path.stem}_{digest}"
                spec = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                spec.loader.exec_module(module)
                name = str(path)
            else:
                module = importlib.import_module(ref)
                name = ref
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {ref!r} failed to import: {type(exc).__name__}: {exc}") from exc
        if self.get_plugin(name) is None:
            self.add_plugin(module, name=name)
        return module

    def check(self) -> None:
        """``check_pending()`` with a message that names the plugin and the misspelt hook."""
        try:
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(self._validation_message(exc)) from None

    def _validation_message(self, exc: pluggy.PluginValidationError) -> str:
        name = self.get_name(exc.plugin) if exc.plugin is not None else None
        return (f"plugin {name or exc.plugin!r}: {exc}; hooks are listed in thawkit/hookspecs.py "
                "(thawkit_register_strategies, thawkit_describe_layout, ...)")

    def add_plugin(self, plugin: object, name: str | None = None) -> str | None:
        """Register ``plugin`` and validate its hooks; on failure it is not left registered."""
        try:
            out = self.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(self._validation_message(exc)) from None
        except ValueError as exc:  # already registered under that name, or blocked
            raise PluginError(f"plugin {name or plugin!r}: {exc}") from None
        try:
            self.check()
        except PluginError:
            self.unregister(plugin)
            raise
        return out


def get_plugin_manager(*, entrypoints: bool | None = None, builtins: bool = True) -> ThawkitPluginManager:
    """A fresh plugin manager with the built-ins and (per ``THAWKIT_PLUGINS``) entry points.

    Example::

        pm = thawkit.get_plugin_manager()
        pm.register(my_plugin_module)          # runtime registration
        adapted = thawkit.adapt(model, "my-strategy", pm=pm)
    """
    pm = ThawkitPluginManager()
    if builtins:
        for name, module_name in DEFAULT_PLUGINS.items():
            pm.register_builtin(name, module_name)
    env = os.environ.get("THAWKIT_PLUGINS")
    if entrypoints is None:
        entrypoints = env is None or env.strip() != ""
    if entrypoints:
        pm.load_entrypoints(None if env is None else env.split(","))
    # a third-party plugin implementing a hook that does not exist is dropped (or, strict, an error)
    while True:
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            bad = pm.get_name(exc.plugin) if exc.plugin is not None else None
            if bad is None or bad in pm.builtin_names or strict_plugins():
                pm.check()
            pm.unregister(name=bad)
            pm._plugin_failed(bad, str(exc))
    return pm


_default: ThawkitPluginManager | None = None


def default_plugin_manager() -> ThawkitPluginManager:
    """The shared manager used when no ``pm=`` is passed; built on first use."""
    global _default
    if _default is None:
        _default = get_plugin_manager()
    return _default


def reset_plugin_manager() -> None:
    """Forget the shared manager (tests, or after installing a plugin)."""
    global _default
    _default = None


def register(plugin: object, name: str | None = None) -> str | None:
    """Register a plugin on the shared manager at runtime and validate its hooks."""
    return default_plugin_manager().add_plugin(plugin, name=name)
