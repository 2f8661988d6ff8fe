"""The plugin manager: built-ins, entry points and runtime registration (a fresh manager from
``get_plugin_manager()``, the shared cached one from ``default_plugin_manager()``).

Failures are contained (see :mod:`thawkit.hookspecs`): a plugin that fails to
register is unloaded whole; at runtime that raises, for an entry point it warns,
pointing at the plugin's file and line.

Environment switches:

* ``THAWKIT_PLUGINS``: unset loads every ``thawkit`` entry point; empty loads
  none; ``a,b`` loads only the entry points (or distributions) named (others: ``hidden``).
* ``THAWKIT_STRICT_PLUGINS=1``: a plugin that fails to import, register or
  contribute, or an unknown name in ``THAWKIT_PLUGINS``, is an error instead of a warning.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, ThawkitError, UnknownNameError, closest, quote

ENTRY_POINT_GROUP = "thawkit"

#: Built-in plugins (plugin name -> module), registered exactly like third-party ones, in this
#: order and before them. The generic fallbacks (``trylast``) answer only when no plugin does.
DEFAULT_PLUGINS: dict[str, str] = {
    "thawkit.torchvision": "thawkit.plugins.torchvision",
    "thawkit.timm": "thawkit.plugins.timm",
    "thawkit.transformers": "thawkit.plugins.transformers",
    "thawkit.python_source": "thawkit.plugins.python_source",
    "thawkit.optimizers": "thawkit.plugins.optimizers",
    "thawkit.recipe_files": "thawkit.plugins.recipe_files",
    "thawkit.strategy.head_only": "thawkit.plugins.strategies.head_only",
    "thawkit.strategy.last_block": "thawkit.plugins.strategies.last_block",
    "thawkit.strategy.gradual": "thawkit.plugins.strategies.gradual",
    "thawkit.strategy.full": "thawkit.plugins.strategies.full",
    "thawkit.strategy.pattern": "thawkit.plugins.strategies.pattern",
    "thawkit.strategy.bitfit": "thawkit.plugins.strategies.bitfit",
    "thawkit.strategy.norm_only": "thawkit.plugins.strategies.norm_only",
    "thawkit.strategy.lp_ft": "thawkit.plugins.strategies.lp_ft",
    "thawkit.strategy.auto_rgn": "thawkit.plugins.strategies.auto_rgn",
    "thawkit.adapters": "thawkit.plugins.adapters",
    "thawkit.cli": "thawkit.plugins.cli",
    "thawkit.train": "thawkit.plugins.train.plugin",
    "thawkit.schedules": "thawkit.plugins.train.schedules",
    "thawkit.commands": "thawkit.plugins.inspection",
    "thawkit.coverage": "thawkit.plugins.coverage",
    "thawkit.check_plugin": "thawkit.plugins.testing.command",
    "thawkit.search": "thawkit.plugins.search.plugin",
    "thawkit.fallbacks": "thawkit.plugins.fallbacks",
}


class PluginLoadWarning(UserWarning):
    """A third-party plugin failed and was unloaded, or ``THAWKIT_PLUGINS`` names no plugin."""


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

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._deferred: list[tuple[str, Callable[[], Iterable[tuple[str, Any]]]]] = []
        self.on_error: Callable[[str, str], None] | None = None

    @property
    def entries(self) -> dict[str, Entry]:
        """Every name, deferred ones included (which runs the deferred contributions)."""
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
                self.on_error(plugin, f"plugin {plugin!r} failed: its deferred {self.kind} names raised "
                                      f"{type(exc).__name__}: {exc}")

    def entry(self, name: str, *, where: str | None = None) -> Entry:
        """The entry for ``name``; deferred names are resolved only when no plugin gave it eagerly."""
        found = self._entries.get(name)
        if found is not None:
            return found
        try:
            return self.entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.entries, where=where) from None

    def get(self, name: str, *, where: str | None = None) -> Any:
        return self.entry(name, where=where).obj

    def names(self) -> list[str]:
        return sorted(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self.entries


def _pair(name: str, obj: Any) -> tuple[str, Any]:
    return name, obj


class ThawkitPluginManager(pluggy.PluginManager):
    """A pluggy manager with thawkit's hooks and registries built from its collector hooks."""

    def __init__(self) -> None:
        super().__init__("thawkit")
        self._registries: dict[str, Registry] = {}
        #: collector hook -> (kind, reader of ``register``'s arguments); plugins add their own
        #: with :meth:`add_collector`
        self.collectors: dict[str, tuple[str, Callable[..., tuple[str, Any]]]] = {
            "thawkit_register_strategies": ("strategy", lambda cls: (getattr(cls, "name", ""), cls)),
            "thawkit_register_sources": ("source", _pair),
            "thawkit_register_optimizers": ("optimizer", _pair),
            "thawkit_recipe_sections": ("recipe section", _pair)}
        self.builtin_names: set[str] = set()
        self.load_errors: dict[str, str] = {}
        self.hidden: dict[str, str | None] = {}  # entry point -> distribution, left out by THAWKIT_PLUGINS
        self._dist_of: dict[str, tuple[str | None, str | None]] = {}
        self._entry_point: dict[str, str] = {}
        self.add_hookspecs(hookspecs)
        self.hook.thawkit_add_hookspecs.call_historic(kwargs={"pm": self})

    def register(self, plugin: object, name: str | None = None, *, validate: bool = True) -> str | None:
        """Register ``plugin`` with its hooks guarded; ``validate`` (a runtime registration)
        builds the registries it adds to now: a clash or a failing collector hook raises
        :class:`PluginError` and nothing of the plugin stays registered."""
        try:
            out = super().register(plugin, name)
        except (ValueError, pluggy.PluginValidationError):
            raise
        except Exception:  # thawkit_add_hookspecs (historic) raised: leave nothing behind
            if self.get_name(plugin) is not None:
                super().unregister(plugin)
            raise
        finally:
            self._registries.clear()
        if out is None:  # blocked by name: nothing was registered
            return out
        for caller in self.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and not (impl.hookwrapper or impl.wrapper):
                    impl.function = self._guarded(impl.function, out, caller.name)  # type: ignore[misc]
            if validate and caller.name in self.collectors:
                self.registry(caller.name)
        return out

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        out = super().unregister(plugin, name)
        self._registries.clear()
        return out

    def _guarded(self, function: Callable[..., Any], plugin: str, hook: str) -> Callable[..., Any]:
        def guarded(*args: Any) -> Any:
            with self.guard(plugin, hook):
                return function(*args)
        return guarded

    @contextlib.contextmanager
    def guard(self, plugin: str | None, what: str) -> Iterator[None]:
        """Run plugin code: a :class:`ThawkitError` passes, any other exception becomes a
        :class:`PluginError` naming the plugin and ``what``, chained to the original."""
        try:
            yield
        except ThawkitError:
            raise
        except Exception as exc:
            raise PluginError(f"{self.describe_plugin(plugin)} failed in {what}: "
                              f"{type(exc).__name__}: {exc}") from exc

    def describe_plugin(self, plugin: str | None) -> str:
        """``plugin 'x' (entry point 'x = module' of distribution d 1.0)``, for messages."""
        if plugin is None:
            return "a plugin not registered with this manager"
        if plugin in self.builtin_names or plugin not in self._entry_point:
            return f"{'built-in ' * (plugin in self.builtin_names)}plugin {plugin!r}"
        dist, version = self._dist_of[plugin]
        return f"plugin {plugin!r} (entry point '{plugin} = {self._entry_point[plugin]}' of " \
               f"distribution {dist} {version})"

    def add_collector(self, hook: str, kind: str,
                      unpack: Callable[..., tuple[str, Any]] = _pair) -> None:
        """Make ``hook`` (a hook a plugin added in ``thawkit_add_hookspecs``) a collector hook:
        :meth:`registry` builds its names of ``kind`` (for messages: "unknown KIND"), reading each
        ``register(...)`` call's arguments with ``unpack`` into ``(name, obj)``."""
        self.collectors[hook] = (kind, unpack)
        self._registries.pop(hook, None)

    def distribution(self, plugin: str) -> tuple[str | None, str | None]:
        """The distribution and version that installed ``plugin`` through an entry point, or
        ``(None, None)`` (a built-in, a runtime registration, a ``--plugin`` module)."""
        return self._dist_of.get(plugin, (None, None))

    def registry(self, hook: str, kind: str | None = None,
                 unpack: Callable[..., tuple[str, Any]] | None = None) -> Registry:
        """The names contributed through collector hook ``hook`` (built once, until plugins change).

        Each plugin's implementation is called through pluggy, one plugin at a time in
        registration order, with a ``register`` callable that records which plugin gave
        each name; ``unpack(*args, **kw) -> (name, obj)`` reads its arguments (default: those
        in :attr:`collectors`, else ``register(name, obj)``). A plugin's names are kept only
        when its hook returns and none clashes; otherwise the plugin is unloaded whole.
        """
        if hook in self._registries:
            return self._registries[hook]
        known_kind, known_unpack = self.collectors.get(hook, (hook, _pair))
        read = unpack or known_unpack
        registry = Registry(kind or known_kind)
        order = [name for name, _ in self.list_name_plugin()]
        impls = sorted(getattr(self.hook, hook).get_hookimpls(),
                       key=lambda i: order.index(i.plugin_name))
        for impl in impls:
            plugin = impl.plugin_name
            trial = Registry(registry.kind)
            trial._entries, trial._deferred = dict(registry._entries), list(registry._deferred)
            others = [p for p in self.get_plugins() if p is not impl.plugin]

            def register(*args: Any, replace: bool = False, _plugin: str = plugin,
                         _trial: Registry = trial, **kw: Any) -> None:
                with self.guard(_plugin, f"{hook}: register()"):
                    name, obj = read(*args, **kw)
                _trial.add(name, obj, _plugin, replace=replace)

            def defer(contribute: Callable[[], Iterable[tuple[str, Any]]], _plugin: str = plugin,
                      _trial: Registry = trial) -> None:
                _trial.defer(_plugin, contribute)

            register.defer = defer  # type: ignore[attr-defined]
            try:
                self.subset_hook_caller(hook, remove_plugins=others)(register=register)
            except Exception as exc:  # one bad plugin must not break the rest
                message = str(exc) if isinstance(exc, ThawkitError) else \
                    f"{self.describe_plugin(plugin)} failed in {hook}: {type(exc).__name__}: {exc}"
                self._plugin_failed(plugin, message, exc)
                continue
            registry = trial
        registry.on_error = self._plugin_failed
        self._registries[hook] = registry
        return registry

    def call_each(self, hook: str, *, checkpoint: Callable[[str], Callable[[], None]] | None = None,
                  **kwargs: Any) -> None:
        """Call every plugin's ``hook`` one at a time; one that fails is unloaded like a failed
        registration, and the others still run. ``checkpoint(plugin)``, called before each
        plugin, returns an undo that removes what a failing plugin added (all or nothing)."""
        for impl in list(getattr(self.hook, hook).get_hookimpls()):
            if self.get_plugin(impl.plugin_name) is not impl.plugin:
                continue
            others = [p for p in self.get_plugins() if p is not impl.plugin]
            undo = checkpoint(impl.plugin_name) if checkpoint is not None else None
            try:
                self.subset_hook_caller(hook, remove_plugins=others)(**kwargs)
            except Exception as exc:
                if undo is not None:
                    undo()
                self._plugin_failed(impl.plugin_name, str(exc), exc)

    def _plugin_failed(self, plugin: str, message: str, cause: BaseException | None = None) -> None:
        """Unload ``plugin`` whole, then warn for an entry point, else (a built-in, a runtime
        registration, or under ``THAWKIT_STRICT_PLUGINS``) raise."""
        obj = self.get_plugin(plugin)
        where = _location(obj, self._entry_point.get(plugin), cause)
        if obj is not None:
            self.unregister(name=plugin)
        self.load_errors[plugin] = message
        if strict_plugins() or plugin not in self._entry_point:
            raise PluginError(message + " (THAWKIT_STRICT_PLUGINS is set)" * strict_plugins()) from cause
        warnings.warn_explicit(f"{message}; the plugin was not loaded (THAWKIT_STRICT_PLUGINS=1 makes "
                               "this an error)", PluginLoadWarning, *where)

    @property
    def strategies(self) -> Registry:
        """Strategy classes by name (``thawkit_register_strategies``)."""
        return self.registry("thawkit_register_strategies")

    @property
    def sources(self) -> Registry:
        """Backbone sources by name (``thawkit_register_sources``)."""
        return self.registry("thawkit_register_sources")

    @property
    def optimizers(self) -> Registry:
        """Optimizer factories by name (``thawkit_register_optimizers``)."""
        return self.registry("thawkit_register_optimizers")

    @property
    def recipe_sections(self) -> Registry:
        """Recipe sections that plugins add (``thawkit_recipe_sections``)."""
        return self.registry("thawkit_recipe_sections")

    # ------------------------------------------------------------ loading
    def register_builtin(self, name: str, module_name: str) -> None:
        """Import and register one of :data:`DEFAULT_PLUGINS`."""
        self.builtin_names.add(name)
        self.register(importlib.import_module(module_name), name=name, validate=False)

    def load_entrypoints(self, only: Iterable[str] | None = None) -> None:
        """Load third-party plugins from the ``thawkit`` entry-point group, each in its own try;
        ``only``: the entry point or distribution names to load (unknown ones: a warning)."""
        wanted = None if only is None else {n.strip() for n in only if n.strip()}
        seen: set[str] = set()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            seen.update(n for n in (ep.name, dist_name) if n)
            if wanted is not None and ep.name not in wanted and dist_name not in wanted:
                self.hidden[ep.name] = dist_name
                continue
            if self.get_plugin(ep.name) is not None or self.is_blocked(ep.name):
                continue
            self._entry_point[ep.name] = ep.value
            self._dist_of[ep.name] = (dist_name, dist.version if dist is not None else None)
            try:
                self.register(ep.load(), name=ep.name, validate=False)  # validated when first used
            except Exception as exc:
                self._plugin_failed(ep.name, f"{self.describe_plugin(ep.name)} failed to load: "
                                    f"{type(exc).__name__}: {exc}", exc)
        for name in sorted((wanted or set()) - seen):
            hint = "".join(f"; did you mean {h!r}?" for h in closest(name, seen, n=1))
            message = (f"THAWKIT_PLUGINS names {name!r}, which is no installed thawkit plugin (entry "
                       f"point or distribution){hint}; installed: {', '.join(sorted(seen)) or '(none)'}")
            if strict_plugins():
                raise PluginError(message + " (THAWKIT_STRICT_PLUGINS is set)")
            warnings.warn_explicit(message, PluginLoadWarning, "THAWKIT_PLUGINS", 1)

    def load_local(self, ref: str, name: str | None = None) -> object:
        """Import a plugin given as a module name or a ``.py`` file path and register it with
        :meth:`add_plugin`; returns the module. ``thawkit.register(ref)`` does it on the shared manager."""
        try:
            if ref.endswith(".py") or os.sep in ref or "/" in ref:
                path = Path(ref)
                if not path.is_file():
                    raise PluginError(f"plugin file {ref!r} does not exist (in {str(Path.cwd())!r})")
                # one module per file: two plugin files with the same name never collide
                digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
                mod_name = f"thawkit_local_{path.stem}_{digest}"
                spec = importlib.util.spec_from_file_location(mod_name, path)
                if spec is None or spec.loader is None:
                    raise PluginError(f"plugin file {ref!r} is not a Python file (.py)")
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                spec.loader.exec_module(module)
                name = name or str(path)
            else:
                module = importlib.import_module(ref)
                name = name or ref
        except PluginError:
            raise
        except Exception as exc:
            hint = "; give an importable module name or a .py file's path" * (
                isinstance(exc, ModuleNotFoundError) and f"{ref}.".startswith(f"{exc.name}."))
            raise PluginError(f"plugin {ref!r} failed to import: {type(exc).__name__}: {exc}{hint}") from exc
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
        """Register ``plugin`` (a module or object with ``thawkit_`` hooks, or a module name or ``.py``
        file path to import: :meth:`load_local`) and validate it; on failure nothing of it stays."""
        if isinstance(plugin, str):
            return self.get_name(self.load_local(plugin, name))
        if not any(self.parse_hookimpl_opts(plugin, n) for n in dir(plugin) if n.startswith("thawkit_")):
            raise PluginError(f"{f'plugin {name!r}' if name else quote(plugin)} is not a thawkit plugin: "
                              "it has no thawkit_ hook (a function named after a hook in thawkit/hookspecs.py"
                              ", marked @thawkit.hookimpl); give a module or object with such hooks, or a "
                              "module name or .py file path")
        try:
            out = self.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(self._validation_message(exc)) from None
        except ValueError as exc:  # already registered under that name, or blocked
            raise PluginError(f"plugin {name or plugin!r}: {exc}") from None
        except ThawkitError:
            raise
        except Exception as exc:  # thawkit_add_hookspecs raised
            raise PluginError(f"plugin {name or plugin!r} failed to register: "
                              f"{type(exc).__name__}: {exc}") from exc
        try:
            self.check()
        except PluginError:
            self.unregister(plugin)
            raise
        return out


def _location(plugin: object | None, entry_point: str | None,
              cause: BaseException | None) -> tuple[str, int]:
    """The plugin's file and its line that failed (else 1), for a warning that points there."""
    module = plugin if hasattr(plugin, "__file__") else sys.modules.get(type(plugin).__module__)
    file = getattr(module, "__file__", None) or ""
    if plugin is None and entry_point is not None:
        with contextlib.suppress(Exception):
            spec = importlib.util.find_spec(entry_point.split(":")[0].strip())
            file = (spec.origin if spec is not None else None) or ""
    root = os.path.dirname(file) if os.path.basename(file) == "__init__.py" else file
    line, seen = 1, set()
    while file and cause is not None and id(cause) not in seen:  # outermost first: innermost wins
        seen.add(id(cause))
        if isinstance(cause, SyntaxError) and str(cause.filename).startswith(root):
            line = cause.lineno or 1
        tb = cause.__traceback__
        while tb is not None:
            line = tb.tb_lineno if tb.tb_frame.f_code.co_filename.startswith(root) else line
            tb = tb.tb_next
        cause = cause.__cause__ or cause.__context__
    return (file, line) if file else ("<unknown plugin file>", 1)


def get_plugin_manager(*, entrypoints: bool | None = None, builtins: bool = True) -> ThawkitPluginManager:
    """A fresh plugin manager with the built-ins and (per ``THAWKIT_PLUGINS``) entry points.

    Example::

        pm = thawkit.get_plugin_manager()
        pm.register(my_plugin_module)          # runtime registration, validated at once
        adapted = thawkit.adapt(model, "my-strategy", pm=pm)
    """
    pm = ThawkitPluginManager()
    if builtins:
        for name, module_name in DEFAULT_PLUGINS.items():
            pm.register_builtin(name, module_name)
    env = os.environ.get("THAWKIT_PLUGINS")
    if entrypoints is not False:
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
                raise  # not reached: check() raises the same error as a PluginError
            pm._plugin_failed(bad, f"{pm.describe_plugin(bad)}: {exc}", exc)
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
    """Register a plugin on the shared manager and validate it; returns its name. ``plugin``: a module
    or object with ``thawkit_`` hooks, or a module name or ``.py`` file (``"path/to/my_strategy.py"``).

    Anything that is not a plugin, a clash with another plugin's name, or a hook that fails
    while registering raises :class:`PluginError` and leaves the shared manager as it was.
    """
    return default_plugin_manager().add_plugin(plugin, name=name)
