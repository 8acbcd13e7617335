"""transformers.Trainer fine-tunes a tree through the tree's own loss (forward with labels)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Trainer, TrainingArguments

from cortex.corruption import MaskCorruption
from cortex.data.tokenization import ProteinTokenizer
from cortex.trainer import NeuralTreeTrainer, TreeTrainerCollator, fit_tasks, tree_dataset, tree_rows

from .helpers import rbd_slice, rbd_tasks, tiny_model


def _args(tmp_path, **overrides) -> TrainingArguments:
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        learning_rate=1e-2,
        num_train_epochs=4,
        disable_tqdm=True,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        prediction_loss_only=True,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    return TrainingArguments(**(base | overrides))


@pytest.mark.parametrize(
    "task_names", [["bind", "expr", "binds"], ["binds"]], ids=["multi_task", "single_task"]
)
def test_trainer_lowers_the_tree_loss_on_real_rows(tmp_path, task_names):
    torch.manual_seed(0)
    model = tiny_model()
    tasks = [t for t in rbd_tasks() if t.name in task_names]
    frame = rbd_slice(96)
    fit_tasks(model, tasks, frame)
    dataset = tree_dataset(frame, tasks)
    trainer = Trainer(
        model=model,
        args=_args(tmp_path),
        train_dataset=dataset,
        eval_dataset=dataset,
        data_collator=TreeTrainerCollator(model, tasks),
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert math.isfinite(before) and math.isfinite(after)
    assert after < 0.95 * before, (before, after)
    history = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(history) == 24  # 96 rows / 16 per batch x 4 epochs, one logged loss per step


def test_trainer_loss_is_the_sum_of_the_leaf_losses():
    model = tiny_model().eval()
    tasks = rbd_tasks()
    frame = rbd_slice(16)
    fit_tasks(model, tasks, frame)
    rows = tree_rows(frame, tasks).to_dict("records")
    inputs = TreeTrainerCollator(model, tasks)(rows)
    loss = model(**inputs).loss
    outputs = model(inputs["root_inputs"])
    expected = sum(
        model.leaves[task.leaf].loss(outputs.leaf_outputs[task.leaf], inputs["labels"][task.leaf])
        for task in tasks
    )
    torch.testing.assert_close(loss, expected)


def test_trainer_with_corruption_corrupts_training_inputs_only(tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    tasks = [t for t in rbd_tasks() if t.name == "expr"]
    frame = rbd_slice(64)
    fit_tasks(model, tasks, frame)
    dataset = tree_dataset(frame, tasks)
    seen = []
    root = model.roots["protein"]
    hook = root.register_forward_hook(
        lambda module, args, output: seen.append(output.is_corrupted.any().item())
    )
    trainer = NeuralTreeTrainer(
        model=model,
        args=_args(tmp_path, num_train_epochs=1, remove_unused_columns=True),
        train_dataset=dataset,
        eval_dataset=dataset,
        data_collator=TreeTrainerCollator(model, tasks),
        corruption={"protein": MaskCorruption(ProteinTokenizer().mask_token_id)},
    )
    trainer.train()
    assert any(seen), "no training batch was corrupted"
    seen.clear()
    trainer.evaluate()
    hook.remove()
    assert seen and not any(seen), "evaluation inputs were corrupted"


def test_collator_names_missing_columns():
    model = tiny_model()
    collator = TreeTrainerCollator(model, rbd_tasks())
    with pytest.raises(ValueError, match=r"lack columns \['bind_delta_log10Ka'.*remove_unused_columns=False"):
        collator([{"sequence": "MKT"}])


def test_collator_rejects_unknown_and_shared_leaves():
    model = tiny_model()
    task = rbd_tasks()[0]
    task.leaf = "missing"
    with pytest.raises(ValueError, match=r"unknown leaves \['missing'\]"):
        TreeTrainerCollator(model, [task])
    first, second = rbd_tasks()[:2]
    second.leaf = first.leaf
    with pytest.raises(ValueError, match="each leaf trained by one task"):
        TreeTrainerCollator(model, [first, second])


def test_tree_rows_names_a_bad_label():
    frame = rbd_slice(8)
    frame["expr_delta_meanF"] = frame["expr_delta_meanF"].astype(object)
    frame.loc[3, "expr_delta_meanF"] = "high"
    with pytest.raises(ValueError, match=r"'expr_delta_meanF' row 3 is 'high'"):
        tree_rows(frame, rbd_tasks())
