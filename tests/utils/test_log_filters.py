"""Each known library message is silenced on the real message, and nothing else is."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities._pytree import _tree_flatten

from recattend.callbacks import LoggedModelSummary
from recattend.utils.log_filters import LIGHTNING_INFO_LOGGER, silence_known_noise
from recattend.utils.loggers import WandbLogger
from tests.callbacks.scripted import Scripted
from tests.helpers import quiet_trainer


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def lightning_info(monkeypatch: pytest.MonkeyPatch):
    """The messages Lightning's rank_zero_info logs, with no filter installed before the test
    (and the logger's filters restored after it)."""
    logger = logging.getLogger(LIGHTNING_INFO_LOGGER)
    monkeypatch.setattr(logger, "filters", [])
    records = Records()
    logger.addHandler(records)
    yield records.messages
    logger.removeHandler(records)


def lightning_messages(tmp_path: Path) -> None:
    """Build a Trainer that says all three: the litlogger tip (no LitLogger), the note on the
    configured model summary, and the litmodels tip (a ModelCheckpoint of its own)."""
    trainer = L.Trainer(
        default_root_dir=tmp_path, logger=False, callbacks=[LoggedModelSummary()],
        accelerator="cpu", enable_progress_bar=False,
    )  # fmt: skip
    trainer._callback_connector._maybe_show_litmodels_tip()  # what fit() calls


def test_lightning_tips_and_the_summary_note_are_dropped(tmp_path: Path, lightning_info) -> None:
    lightning_messages(tmp_path)
    said = [m.split(":")[0] for m in lightning_info]
    assert said.count("💡 Tip") == 2 and any(
        m.startswith("Trainer already configured") for m in said
    )
    lightning_info.clear()
    silence_known_noise()
    silence_known_noise()  # twice: one filter
    assert len(logging.getLogger(LIGHTNING_INFO_LOGGER).filters) == 1
    lightning_messages(tmp_path)
    assert lightning_info == [
        "GPU available: False, used: False",
        "TPU available: False, using: 0 TPU cores",
    ]


def test_the_pytree_deprecation_is_dropped() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _tree_flatten(1)  # Lightning builds a LeafSpec, which torch deprecates
        assert [str(w.message).split(" is ")[0] for w in caught] == [
            "`isinstance(treespec, LeafSpec)`"
        ]
        caught.clear()
        silence_known_noise()
        _tree_flatten(1)
        warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == ["another FutureWarning"]


def test_wandb_is_not_told_about_anonymous(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

    # W&B 0.31 warns "The anonymous setting has no effect" whenever wandb.init receives the key,
    # even as None (once per process, so the arguments are compared rather than the output).
    ours = WandbLogger(offline=True, save_dir=str(tmp_path), project="noise")
    theirs = LightningWandbLogger(offline=True, save_dir=str(tmp_path), project="noise")
    assert "anonymous" not in ours._wandb_init
    assert "anonymous" in theirs._wandb_init and theirs._wandb_init["anonymous"] is None
    assert {k: v for k, v in theirs._wandb_init.items() if k != "anonymous"} == ours._wandb_init


def test_the_model_summary_has_no_unmeasured_flops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trainer = quiet_trainer(tmp_path, 1, [LoggedModelSummary()], enable_model_summary=True)
    with caplog.at_level(logging.INFO, logger="recattend.callbacks.summary"):
        trainer.fit(Scripted())
    [summary] = [r.getMessage() for r in caplog.records if r.name == "recattend.callbacks.summary"]
    assert summary.splitlines()[1].split() == ["|", "Name", "|", "Type", "|", "Params", "|", "Mode"]
    assert "1         Total params" in summary and "flop" not in summary.lower()
    # Lightning added no summary of its own next to the configured one.
    assert sum(isinstance(cb, ModelSummary) for cb in trainer.callbacks) == 1
    # Measured FLOPs would be kept.
    with caplog.at_level(logging.INFO, logger="recattend.callbacks.summary"):
        caplog.clear()
        LoggedModelSummary.summarize(
            [("Name", ["net"]), ("FLOPs", ["2.0 K"])], 1, 1, 0.0, {"train": 1, "eval": 0}, 2000
        )
    assert "Total Flops" in caplog.records[0].getMessage()


def test_lightning_messages_print_once_through_the_root_handlers(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = logging.getLogger("lightning")
    own = logging.StreamHandler()  # as `import lightning` installs it: "INFO: <message>"
    own.setFormatter(logging.Formatter("INFO: %(message)s"))
    root = Records()  # Hydra's console and file handlers stand here
    monkeypatch.setattr(package, "handlers", [own])
    monkeypatch.setattr(logging.getLogger(), "handlers", [root])
    silence_known_noise()
    logging.getLogger("lightning.recattend_test").info("Seed set to 0")  # a child that propagates
    assert package.handlers == [] and root.messages == ["Seed set to 0"]
    assert "INFO: Seed set to 0" not in capsys.readouterr().err
