"""The command line of ``train.py``, ``eval.py`` and ``predict.py``: Hydra's main with short,
helpful errors, and the command that resumes a run.

:func:`hydra_main` runs a task under ``@hydra.main``. When the config cannot be composed (before
any run folder exists), it replaces Hydra's report, which for a mistyped key advises "To append to
your config use +trainer.max_epoch=1" (the route to a confusing error later), with one or two
lines naming the closest existing keys, groups or options::

    Error: no key 'trainer.max_epoch' in the config. Did you mean trainer.max_epochs=1?
    (python train.py --cfg job prints every key and its value)

and removes the multirun folder that Hydra made before checking the jobs' overrides
(:func:`recattend.utils.hydra.remove_empty_sweep_dir`). With ``HYDRA_FULL_ERROR=1`` Hydra's full
traceback is kept, the suggestion added as a note. Errors of the task itself are reported by Hydra
as before.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    CompactHydraException,
    ConfigCompositionException,
    MissingConfigException,
)
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from recattend.utils.hydra import remove_empty_sweep_dir
from recattend.utils.signals import restore_ctrl_c, stopped_by_ctrl_c

CONFIG_MODULE = "recattend.conf"
_FULL_ERROR = "HYDRA_FULL_ERROR"


def hydra_main(config_name: str, task: str) -> Callable[[], None]:
    """The entry point that runs the task with ``conf/<config_name>.yaml`` and the command line,
    as ``@hydra.main`` does, and reports errors of composition with :func:`describe_error` (exit
    status 1).

    Args:
        config_name: the root config: ``train``, ``eval`` or ``predict``.
        task: ``"<module>:<function>"``, e.g. ``"recattend.tasks.train:run"``, called with the
            config. Imported only when the job starts, so that ``--help``, ``--cfg`` and errors
            in the command line answer at once, without importing PyTorch.

    Hydra prints errors of composition itself and exits, unless ``HYDRA_FULL_ERROR=1``: so that
    they reach this wrapper, the variable is set while Hydra composes, and restored before the
    task runs, whose errors keep Hydra's usual report.
    """
    module, _, function = task.partition(":")
    user_setting: str | None = None
    started = False

    def job(cfg: DictConfig) -> Any:
        nonlocal started
        started = True
        _set_full_error(user_setting)
        return getattr(importlib.import_module(module), function)(cfg)

    job.__module__ = module  # Hydra names the job after the task's module: train, eval, predict

    app = hydra.main(
        version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=config_name
    )(job)

    def main() -> None:
        nonlocal user_setting
        unknown = unknown_checkpoint(config_name, _overrides(sys.argv[1:]))
        if unknown:  # before Hydra makes a run folder
            sys.stderr.write(unknown + "\n")
            sys.exit(1)
        user_setting = os.environ.get(_FULL_ERROR)
        _set_full_error("1")
        restore_ctrl_c()  # the run's interrupt handling takes KeyboardInterrupt from here on
        try:
            app()
        except KeyboardInterrupt as stop:  # Ctrl-C before the run could save (or a second one)
            stopped_by_ctrl_c(str(stop))
        except Exception as error:
            if started:  # the task's own error, reported by Hydra unless HYDRA_FULL_ERROR=1
                raise
            remove_empty_sweep_dir()
            message = describe_error(error, config_name, _overrides(sys.argv[1:]))
            if user_setting == "1":
                error.add_note(message)
                raise
            sys.stderr.write(message + "\n")
            sys.exit(1)
        finally:
            _set_full_error(user_setting)

    return main


# The settings that name a checkpoint: shipped weights by name, or a file.
CHECKPOINT_KEYS = ("weights", "init_from", "ckpt_path")


def unknown_checkpoint(config_name: str, overrides: Sequence[str]) -> str | None:
    """The error report for an override that names a checkpoint that is neither shipped
    weights nor a file (``weights=leavs``), with the closest shipped names; None when every
    such override is fine. ``ckpt_path=last`` (training's resume) and multirun lists are left to
    the task."""
    from recattend import pretrained  # light: no PyTorch

    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key not in CHECKPOINT_KEYS or value in ("", "null", "None") or "," in value:
            continue
        if key == "ckpt_path" and config_name == "train" and value == "last":
            continue
        if value in pretrained.REGISTRY or Path(value).expanduser().is_file():
            continue
        close = _close(value, list(pretrained.REGISTRY))
        meant = f" Did you mean {key}={close[0]}?" if close else ""
        return (
            f"Error: {key}={value}: no shipped weights of that name and no such file.{meant}\n"
            f"Shipped weights: {', '.join(pretrained.REGISTRY)}; or give a checkpoint file's path."
        )
    return None


def _set_full_error(value: str | None) -> None:
    if value is None:
        os.environ.pop(_FULL_ERROR, None)
    else:
        os.environ[_FULL_ERROR] = value


def _overrides(argv: Sequence[str]) -> list[str]:
    """The overrides on a command line: the arguments ``key=value`` that are not options."""
    return [arg for arg in argv if "=" in arg and not arg.startswith("-")]


# Set by the Makefile's train target to "make train": resume commands then go through make too.
LAUNCHER = "RECATTEND_LAUNCHER"


def program() -> str:
    """How this process was started, as a command that works from the folder it was started in
    with or without the virtual environment activated: ``python train.py`` when ``python`` on
    the PATH is this interpreter, else this interpreter's path (``.venv/bin/python train.py``);
    an installed command (``recattend-train``) by its name when the PATH finds it, else by its
    path."""
    name = sys.argv[0] if sys.argv and sys.argv[0] else "train.py"
    if name.endswith(".py"):
        return f"{_command('python', sys.executable)} {name}"
    return _command(os.path.basename(name), name)


def _command(name: str, path: str) -> str:
    """``name`` when the PATH finds ``path`` by it, else ``path`` (relative to the working folder
    when inside it)."""
    found = shutil.which(name)
    if found and os.path.abspath(found) == os.path.abspath(path):
        return name
    relative = os.path.relpath(os.path.abspath(path))
    return relative if not relative.startswith("..") else os.path.abspath(path)


def resume_command(checkpoint: Path) -> str:
    """The command that resumes this run from ``checkpoint``: the program (or ``make train``
    for a run ``make train`` started), this run's (or multirun job's) overrides less
    ``ckpt_path``, and ``ckpt_path=<checkpoint>``, quoted for a POSIX shell."""
    overrides: list[str] = []
    if HydraConfig.initialized():
        overrides = [
            str(o) for o in HydraConfig.get().overrides.task if _key(str(o)) != "ckpt_path"
        ]
    words = [*overrides, f"ckpt_path={checkpoint}"]
    if os.environ.get(LAUNCHER) == "make train":
        inner = " ".join(shlex.quote(word) for word in words)
        return 'make train ARGS="' + re.sub(r'([\\"$`])', r"\\\1", inner) + '"'  # for the shell
    return " ".join([program(), *(shlex.quote(word) for word in words)])


def _key(override: str) -> str:
    """The key of an override: ``trainer.max_epochs`` of ``++trainer.max_epochs=3``."""
    return override.lstrip("+~").split("=", 1)[0]


def describe_error(error: Exception, config_name: str, overrides: Sequence[str]) -> str:
    """The report of an error raised before the task ran, in one or two lines.

    * A key that the config does not have (``trainer.max_epoch=1``, ``modle=full``): the closest
      keys and config groups, as overrides with the given value (``trainer.max_epochs=1``,
      ``model=full``).
    * An option that a group does not have (``dataset=cvpp``): the closest options, and all of
      them.
    * Anything else: the message, as Hydra prints it.
    """
    cause = error.__cause__
    struct = isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key
    if isinstance(error, ConfigCompositionException) and struct:
        return _unknown_key(str(cause.full_key), config_name, overrides)
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        return _unknown_option(error, config_name)
    text = str(error) if isinstance(error, CompactHydraException) else repr(error)
    if isinstance(cause, OmegaConfBaseException):
        text += f"\n{cause}"
    return f"Error: {text}\n(HYDRA_FULL_ERROR=1 shows the full traceback)"


def _unknown_key(key: str, config_name: str, overrides: Sequence[str]) -> str:
    """Report of an override of a key that is neither in the config nor a config group.

    ``key`` is the first missing part of the override's key: ``trainr`` of ``trainr.max_epochs=3``,
    whose suggestion keeps the rest (``trainer.max_epochs=3``).
    """
    given = next((o for o in overrides if f"{_key(o)}.".startswith(f"{key}.")), None)
    value = given.split("=", 1)[1] if given else "..."
    rest = _key(given)[len(key) :] if given else ""
    cfg, groups = _composed(config_name, overrides)
    names = _close_names(key, rest, value, cfg, groups)
    suggestions = [f"{name}{rest}={value}" for name in names]
    what = "key" if "." in key else "key or config group"
    head = f"Error: no {what} '{key}' in the config."
    if suggestions:
        head += f" Did you mean {' or '.join(suggestions)}?"
    hint = f"({program()} --cfg job prints every key and its value"
    if not suggestions:
        hint += f"; +{key}={value} adds a new key"
    return f"{head}\n{hint})"


def _unknown_option(error: MissingConfigException, config_name: str) -> str:
    """Report of a config that does not exist: an option that its group lacks (``dataset=cvpp``:
    the closest options, and all of them), or a group that does not exist (``+datset=cvppp``:
    the closest groups)."""
    group, _, option = str(error.missing_cfg_file).rpartition("/")
    first = str(error).splitlines()[0].rstrip()
    options = list(error.options or [])
    if options:
        close = [f"{group}={o}" for o in _close(option, options)]
        listed = f"Available options in '{group}': {', '.join(options)}"
    else:
        groups = _composed(config_name, [])[1]
        close = [f"{g}={option}" for g in _close(group, list(groups))]
        listed = f"Config groups: {', '.join(g for g in groups if not g.startswith('hydra'))}"
    head = f"Error: {first}." + (f" Did you mean {' or '.join(close)}?" if close else "")
    return f"{head}\n{listed}"


def _close_names(
    key: str, rest: str, value: str, cfg: DictConfig | None, groups: dict[str, list[str]]
) -> list[str]:
    """The existing keys and groups closest to ``key`` (followed by ``rest`` in the override),
    written as an override names them: ``trainer.max_epochs`` for a key, ``dataset/augment`` for
    a nested group given one of its options. Keys at the same depth only: first those beside
    it, then any; with ``rest``, those that have it when some do; groups only where ``value`` is
    one of their options, when one of them has it."""
    keys = list(_dotted_keys(cfg)) if cfg is not None else []
    depth = key.count(".")
    level = [k for k in keys if k.count(".") == depth]
    parent, _, leaf = key.rpartition(".")
    if parent:
        siblings = [k.rpartition(".")[2] for k in level if k.startswith(f"{parent}.")]
        names = [f"{parent}.{s}" for s in _close(leaf, siblings)] or _close(key, level)
    else:
        names = _close(key, sorted({*level, *groups}))
    if rest:  # a node to set a key of: never a group choice
        return [n for n in names if f"{n}{rest}" in keys] or names

    def as_override(name: str) -> str:  # a group whose option is given: group syntax
        group = name.replace(".", "/")
        return group if value in groups.get(group, ()) else name

    named = [as_override(n) for n in names]
    if any(value in groups.get(n, ()) for n in named):
        named = [n for n in named if n not in groups or value in groups[n]]
    return list(dict.fromkeys(named))


def _close(word: str, choices: Sequence[str]) -> list[str]:
    """The (at most 3) choices most like ``word``. The cutoff, above difflib's 0.6, keeps
    typos (modle -> model: 0.8, trainer.max_epoch -> max_epochs: 0.95, min_epochs: 0.84) and
    drops mere neighbours (datset -> test: 0.6, max_epoch -> max_steps: 0.67)."""
    return difflib.get_close_matches(word, choices, n=3, cutoff=0.7)


def _dotted_keys(node: Any, prefix: str = "") -> Iterator[str]:
    """Every key of a config, nested ones as ``a.b.c``, without resolving any value."""
    if isinstance(node, DictConfig):
        for name in node:
            path = f"{prefix}{name}"
            yield path
            yield from _dotted_keys(node._get_node(name), f"{path}.")


def _composed(
    config_name: str, overrides: Sequence[str]
) -> tuple[DictConfig | None, dict[str, list[str]]]:
    """The config with the command line's group choices (``dataset=cvppp`` changes the keys of
    ``dataset``), else the default one, and every config group with its options.

    Only overrides of top-level names with one value are kept: they are the group choices (and a
    few plain keys), while a key with a dot cannot change which keys exist.
    """
    choices = [o for o in overrides if "." not in _key(o) and "," not in o.split("=", 1)[1]]
    GlobalHydra.instance().clear()
    try:
        with hydra.initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()
            groups = {g: loader.get_group_options(g) for g in _all_groups(loader, "")}
            cfg = None
            for attempt in (choices, []):
                try:
                    cfg = hydra.compose(config_name, overrides=attempt, return_hydra_config=True)
                    break
                except Exception:  # another mistake among them: the defaults, then nothing
                    continue
    except Exception:
        return None, {}
    return cfg, groups


def _all_groups(loader: Any, parent: str) -> Iterator[str]:
    """The config groups under ``parent``, nested ones as ``dataset/augment``."""
    for name in loader.list_groups(parent):
        group = f"{parent}/{name}" if parent else name
        yield group
        yield from _all_groups(loader, group)
