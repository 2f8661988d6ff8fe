"""``python -m thawkit`` (and ``torchrun -m thawkit``) runs the installed ``thawkit`` command,
which the built-in command-line plugin provides; core imports no plugin."""
from importlib.metadata import entry_points

scripts = list(entry_points(group="console_scripts", name="thawkit"))
if not scripts:
    raise SystemExit("python -m thawkit: no `thawkit` command is installed; pip install thawkit")
raise SystemExit(scripts[0].load()())
