"""A run directory: its layout (:class:`RunDir`, the one owner of its file names), and its guards:
one process at a time, clear errors for disk trouble and tampered
files, leftovers cleaned, and no code run from a directory that is not trusted.

* :func:`run_lock`: an OS file lock (``flock``) on ``run.lock`` held while ``thawkit train``
  writes the directory; the OS releases it when the process exits, however it exits, so a
  crash never leaves a stale lock. A second process fails at once naming the holder's pid.
* :func:`disk_errors`: an ``OSError`` while writing (full disk, read-only file system, a
  parent that is a file, a dangling symlink) becomes a :class:`RunDirError` naming the path
  and the cause.
* :func:`read_json`: a run file that is torn or of the wrong shape is an error naming the file.
* :func:`check_trusted`: ``predict``/``export`` refuse a run recipe's ``plugins:`` and
  ``python:`` factories unless the user trusts the run (``--trust-run``) or loaded the plugin.
"""
from __future__ import annotations

import errno
import json
import math
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError, ThawkitError, default_plugin_manager

if TYPE_CHECKING:
    from thawkit import Recipe, ThawkitPluginManager

# yaml, thawkit's recipe models and fcntl are imported where used: `thawkit --help` imports this
# module for the file names, and fcntl does not exist on Windows.

#: ``python:`` factories that ship with thawkit and may be rebuilt from any run directory.
TRUSTED_FACTORIES = ("thawkit.plugins.train.demo_model:small_cnn",)

_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EEXIST: "it exists and is not a directory (a file, or a symlink to nothing)",
    errno.ENAMETOOLONG: "the name is too long",
}


class RunDirError(ThawkitError, OSError):
    """A run directory that cannot be written (full disk, read-only, not a directory) or is
    held by another process; ``errno`` is the cause's."""

    def __init__(self, errno_: int | None, message: str) -> None:
        super().__init__(message)
        self.errno = errno_

    def __str__(self) -> str:  # OSError would prefix "[Errno N]"
        return str(self.args[0])


def os_cause(exc: OSError) -> str:
    """What went wrong, in words: "the disk is full", "the file system is read-only", ..."""
    return _CAUSES.get(exc.errno or 0) or exc.strerror or str(exc) or type(exc).__name__


def describe_os_error(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """``'PATH': cause`` for an OSError (the path it names, else ``path``)."""
    where = exc.filename if exc.filename is not None else path
    return f"{str(where)!r}: {os_cause(exc)}" if where is not None else os_cause(exc)


@contextmanager
def disk_errors(action: str, path: str | os.PathLike) -> Iterator[None]:
    """Turn an ``OSError`` inside the block into a :class:`RunDirError`: ``cannot ACTION 'PATH': cause``."""
    try:
        yield
    except ThawkitError:
        raise
    except OSError as exc:
        raise RunDirError(exc.errno, f"cannot {action} {describe_os_error(exc, path)}") from exc


def make_run_dir(run_dir: Path, field: str = "train.output") -> bool:
    """Create ``run_dir`` (and its parents); True when it was created here."""
    if run_dir.is_symlink() and not run_dir.exists():
        raise RunDirError(errno.EEXIST, f"{field}: {str(run_dir)!r} is a symlink to nothing "
                          f"({os.readlink(run_dir)!r}); remove it or choose another --output")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(errno.ENOTDIR, f"{field}: {str(run_dir)!r} exists and is not a directory")
    if run_dir.is_dir():
        return False
    with disk_errors(f"create the run directory ({field})", run_dir):
        run_dir.mkdir(parents=True)
    return True


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"The run's ``{name}``.")


class RunDir:
    """The layout of a run directory, its one owner: the name of every file a run writes there
    (``RunDir.CHECKPOINT``), their paths (``RunDir(path).checkpoint``) and the lock.

    * ``recipe.yaml``: the resolved recipe (``head.num_classes`` filled in), the single source of
      truth for ``--resume``, ``predict`` and ``export``;
    * ``plan.json``: the plan (every parameter's block, phase, group, lr, weight decay) and, under
      ``cache``, whether each phase trains on cached features and why;
    * ``data.json``: class names and the resolved preprocessing;
    * ``metrics.jsonl``, ``curves.png``, ``model.safetensors``, ``best.safetensors``,
      ``checkpoint.pt`` and ``run.json`` (status), written as the run goes; the checkpoint and
      the best weights hold only the tensors training can change (:mod:`.start`);
    * ``start.json`` (and ``start.safetensors`` when the starting weights have no name to be
      loaded again by): what the run started from, for resume, predict and WiSE-FT;
    * ``run.lock``: held while a process writes the directory (:meth:`lock`);
    * ``tensorboard/`` and ``mlflow/``: the TensorBoard and MLflow loggers' default stores;
    * ``cache/``: cached features; ``probe.json`` and ``heads.safetensors``: ``thawkit probe``'s.
    """

    RECIPE = "recipe.yaml"
    PLAN = "plan.json"
    DATA = "data.json"
    METRICS = "metrics.jsonl"
    PLOT = "curves.png"
    MODEL = "model.safetensors"
    BEST = "best.safetensors"
    CHECKPOINT = "checkpoint.pt"
    STATUS = "run.json"
    LOCK = "run.lock"
    START = "start.json"
    START_WEIGHTS = "start.safetensors"
    CACHE = "cache"
    PROBE = "probe.json"
    PROBE_HEADS = "heads.safetensors"
    TENSORBOARD = "tensorboard"
    MLFLOW = "mlflow"
    #: Every file a run writes into its directory (export refuses to overwrite them).
    FILES = (RECIPE, PLAN, DATA, METRICS, PLOT, MODEL, BEST, CHECKPOINT, STATUS, LOCK, START,
             START_WEIGHTS)
    #: Any of these means the directory holds a run already (a new run refuses it).
    TAKEN = (CHECKPOINT, METRICS, RECIPE, MODEL)
    #: Files of a run that stopped before its first checkpoint; a restart writes them afresh.
    STALE_WITHOUT_CHECKPOINT = (METRICS, BEST, STATUS, PLOT)
    #: what a run that ended before its first checkpoint can leave behind: nothing to resume, so
    #: a new run into its directory replaces it (the feature cache, if a kill left it, included)
    EARLY = (RECIPE, PLAN, DATA, METRICS, STATUS, PLOT, START, START_WEIGHTS, CACHE)

    recipe = _file(RECIPE)
    plan = _file(PLAN)
    data = _file(DATA)
    metrics = _file(METRICS)
    plot = _file(PLOT)
    model = _file(MODEL)
    best = _file(BEST)
    checkpoint = _file(CHECKPOINT)
    status = _file(STATUS)
    lock_file = _file(LOCK)
    start = _file(START)
    start_weights = _file(START_WEIGHTS)
    cache = _file(CACHE)
    probe = _file(PROBE)
    probe_heads = _file(PROBE_HEADS)

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def weights(self, best: bool = False) -> Path:
        """The final weights, or ``best=True`` those of the best epoch."""
        return self.best if best else self.model

    def lock(self) -> AbstractContextManager[None]:
        """:func:`run_lock` on this directory."""
        return run_lock(self.path)


# -------------------------------------------------------------------- lock
@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/run.lock`` exclusively for the block; a :class:`RunDirError` naming the
    holder when another process has it. On platforms without ``fcntl`` no lock is taken; in a
    distributed job (``RANK`` set) only rank 0, the one that writes the directory, takes it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    path = RunDir(run_dir).lock_file
    with disk_errors("write", path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if _flock(fcntl, fd):
            with disk_errors("write", path):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
        else:
            holder = _read_holder(fd)
            raise RunDirError(errno.EBUSY, f"{str(run_dir)!r} is in use by another thawkit process"
                              f"{f' (pid {holder})' if holder else ''}, which holds {str(path)!r}; "
                              "wait for it to end (or stop it), or choose another --output")
        yield  # the lock goes with the file descriptor: closing it (or exiting) releases it
    finally:
        os.close(fd)


def _flock(fcntl: Any, fd: int) -> bool:
    """Lock ``fd`` exclusively; False when another process holds it. A file system without
    ``flock`` (some network mounts) counts as locked: the run goes on unlocked, as before."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    return True


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def remove_if_unused(run_dir: Path) -> None:
    """Take back a run directory a command created when the run wrote nothing into it."""
    try:
        if [p.name for p in run_dir.iterdir()] in ([], [RunDir.LOCK]):
            RunDir(run_dir).lock_file.unlink(missing_ok=True)
            run_dir.rmdir()
    except OSError:
        pass


def remove_leftovers(run_dir: Path) -> list[str]:
    """Delete the temporary files of writes a crash interrupted (``.NAME.*.tmp``); the names."""
    gone = []
    for p in run_dir.glob(".*.tmp"):
        if p.is_file() and any(p.name.startswith(f".{name}.") for name in RunDir.FILES):
            try:
                p.unlink()
            except OSError:
                continue
            gone.append(p.name)
    return sorted(gone)


# ------------------------------------------------------------- run files
def read_json(path: Path, *, kind: type = dict) -> Any:
    """A run directory's JSON file, or a :class:`ConfigError` naming it when it is unreadable."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{str(path.parent)!r} is not a thawkit run directory: it has no "
                          f"{path.name}") from None
    except OSError as exc:
        raise ConfigError(f"run file {describe_os_error(exc, path)}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"run file {str(path)!r} is damaged (not valid JSON: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})"
                          "; it was changed or torn after the run wrote it") from None
    if not isinstance(data, kind):
        raise ConfigError(f"run file {str(path)!r} is damaged: expected a JSON "
                          f"{'object' if kind is dict else kind.__name__}, got {type(data).__name__}")
    return data


def damaged(path: Path, what: str) -> ConfigError:
    return ConfigError(f"run file {str(path)!r} is damaged: {what}; it was changed or torn after "
                       "the run wrote it")


def run_status(run_dir: Path) -> str:
    """The status in ``run.json`` ("unknown" when it is missing or damaged)."""
    try:
        status = read_json(RunDir(run_dir).status).get("status")
    except ConfigError:
        return "unknown"
    return status if isinstance(status, str) else "unknown"


# ------------------------------------------------------------------ trust
def read_recipe_mapping(path: Path) -> dict[str, Any]:
    """The run recipe as a mapping (YAML), without validating it or loading any plugin."""
    import yaml

    try:
        text = path.read_bytes().decode("utf-8")
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"{str(path.parent)!r} is not a thawkit run directory: it has no "
                          f"{path.name}") from None
    except OSError as exc:
        raise ConfigError(f"run file {describe_os_error(exc, path)}") from None
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError, ValueError) as exc:
        raise damaged(path, f"not a UTF-8 YAML document ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise damaged(path, f"expected a mapping, got {type(data).__name__}")
    return data


def untrusted_code(data: dict[str, Any], *, base: Path, loaded: list[str]) -> list[str]:
    """What a run recipe would import: plugins not already loaded, and ``python:`` factories
    (entries that are not strings are left to the recipe's validation, which refuses them)."""
    found = []
    refs = data.get("plugins") or []
    loaded_paths = {str(Path(n).resolve()) for n in loaded if n.endswith(".py")}
    for ref in refs if isinstance(refs, list) else []:
        if not isinstance(ref, str):
            continue
        if ref.endswith(".py") or "/" in ref or os.sep in ref:
            try:
                path = base / ref if (base / ref).is_file() else Path(ref)
                known = str(path.resolve()) in loaded_paths
            except (OSError, ValueError):  # a name too long, a NUL byte
                known = False
            if not known:
                found.append(f"plugin {_short(ref)}")
        elif ref not in loaded:
            found.append(f"plugin {_short(ref)}")
    backbone = data.get("backbone")
    if isinstance(backbone, dict) and backbone.get("source") == "python" \
            and isinstance(backbone.get("name"), str) and backbone["name"] not in TRUSTED_FACTORIES:
        found.append(f"the factory {_short('python:' + backbone['name'])}")
    if len(found) > 3:
        found[3:] = [f"{len(found) - 3} more"]
    return found


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def check_trusted(run_dir: Path, data: dict[str, Any], *, loaded: list[str], command: str) -> None:
    """Refuse a run recipe that would import code the user did not name."""
    found = untrusted_code(data, base=run_dir, loaded=loaded)
    if found:
        raise ConfigError(
            f"{command}: {str(RunDir(run_dir).recipe)!r} names {' and '.join(found)}, whose code "
            f"{command} would import and run; pass --trust-run if you trust this run directory "
            "(or load the plugin yourself with -p MODULE)")


# ------------------------------------------------------ reading a run
def read_run_recipe(run_dir: Path, *, pm: ThawkitPluginManager | None = None, trust: bool = True,
                    command: str = "predict") -> Recipe:
    """The run's own recipe, read with ``pm`` (default: the shared manager; a recipe that names
    ``plugins:`` then gets a manager of its own, ``recipe.plugin_manager``, which the run uses).
    ``trust=False`` (predict, export): refuse one that names plugins or ``python:`` factories the
    user did not load (:func:`check_trusted`)."""
    from thawkit import load_recipe

    path = RunDir(run_dir).recipe
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a thawkit run directory: it has no {path.name}")
    data = read_recipe_mapping(path)
    if not trust:
        plugins = (pm or default_plugin_manager()).list_name_plugin()
        loaded = [name for name, plugin in plugins]
        loaded += [getattr(plugin, "__name__", "") for _, plugin in plugins]
        check_trusted(Path(run_dir), data, loaded=loaded, command=command)
    try:
        return load_recipe(path, pm=pm)
    except ThawkitError:
        raise
    except (ValueError, TypeError, RecursionError, OverflowError) as exc:
        raise damaged(path, f"{type(exc).__name__}: {str(exc)[:200]}") from None


def read_data_info(run_dir: Path) -> dict[str, Any]:
    """``data.json``: class names and preprocessing, checked (a damaged file is an error naming it)."""
    path = RunDir(run_dir).data
    info = read_json(path)
    classes = info.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise damaged(path, "'classes' must be a non-empty list of class names")
    prep = info.get("preprocess")
    problem = _preprocess_problem(prep) if isinstance(prep, dict) else "it must be a JSON object"
    if problem:
        raise damaged(path, f"'preprocess': {problem}")
    return info


def _preprocess_problem(prep: dict[str, Any]) -> str | None:
    if prep.get("reader", "images") != "images":  # another data reader's: it reads its own
        return None if isinstance(prep.get("reader"), str) else "reader must be a string"
    for key in ("image_size", "resize"):
        v = prep.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096:
            return f"{key} must be an integer from 1 to 4096, got {str(v)[:40]}"
    for key in ("mean", "std"):
        v = prep.get(key)
        if not isinstance(v, list) or len(v) != 3 or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                and (key == "mean" or x != 0) for x in v):
            return f"{key} must be 3 finite numbers{' (not 0)' if key == 'std' else ''}"
    if not isinstance(prep.get("interpolation"), str):
        return "interpolation must be a string"
    if not isinstance(prep.get("augment"), bool):
        return "augment must be true or false"
    return None
