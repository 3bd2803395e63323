"""The teacher's BatchNorm layers: the batch's statistics (the default, as DINO) or their running averages.

Chapter 6 compares the two with no normaliser: the batch statistics centre the teacher a little, and
that is what keeps such a run at about two clusters instead of one.
"""
import torch
from torch import nn

from klteach.__main__ import build_parser
from klteach.config import setting_info
from klteach.train import TrainConfig, Trainer


def toy(**kw):
    settings = dict(dataset="toy", clusters=8, batch_size=64, eval_every=0, device="cpu", steps=20)
    return Trainer(TrainConfig(**{**settings, **kw}))


def batchnorm_modes(model: nn.Module) -> set[bool]:
    return {m.training for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def test_the_teacher_uses_batch_statistics_by_default():
    assert TrainConfig().teacher_batch_statistics is True
    assert setting_info("teacher_batch_statistics").kind == "live"
    trainer = toy()
    trainer.step()
    assert batchnorm_modes(trainer.teacher) == {True}
    assert batchnorm_modes(trainer.student) == {True}


def test_running_statistics_put_only_the_teachers_batchnorm_in_eval_mode():
    trainer = toy(teacher_batch_statistics=False)
    trainer.step()
    assert batchnorm_modes(trainer.teacher) == {False}
    assert batchnorm_modes(trainer.student) == {True}
    # the teacher's embedding of a batch is then its evaluation-mode embedding, whatever the batch
    x = trainer.dataset.train[:64]
    with torch.no_grad():
        alone = trainer.teacher.embed(x[:8])
        in_batch = trainer.teacher.embed(x)[:8]
    torch.testing.assert_close(alone, in_batch)


def test_the_setting_changes_live_and_from_the_command_line():
    trainer = toy()
    trainer.step()
    trainer.set(teacher_batch_statistics=False)
    trainer.step()
    assert batchnorm_modes(trainer.teacher) == {False} and trainer.step_count == 2   # no restart
    args = build_parser().parse_args(["train", "--teacher-running-statistics"])
    assert args.teacher_batch_statistics is False
