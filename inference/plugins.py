"""Commands and `status` sections that other packages add to `infer-corpus`.

They are found through the `infer_corpus.plugins` entry point group, so this package never
imports them: the HTCondor layer (`submit`) registers `infer-corpus submit` and the DAG's state
in `infer-corpus status` this way. A plugin is any object (usually a module) with:

- `add_commands(subparsers, config_args)`: add its sub-commands to the `argparse` sub-parsers,
  each with `set_defaults(handler=FUNCTION)` (the function takes the parsed arguments and
  returns the exit code); `config_args(parser)` adds the shared `--config` / `--set` options;
- optionally `status(workdir) -> dict | None`, its section of `infer-corpus status --json`
  (None: nothing to report for this workdir), and `print_status(section)` for the text form.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

GROUP = "infer_corpus.plugins"


@cache
def plugins() -> dict[str, Any]:
    """The installed plugins by entry point name, loaded once."""
    return {ep.name: ep.load() for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name)}
