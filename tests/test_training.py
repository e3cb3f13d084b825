"""Real fine-tuning of SmolLM2 for a few steps: packing, the saved folder, crash resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from distill_dag.training.config import TrainingConfig
from distill_dag.training.data import tokenize_records
from distill_dag.training.train import MARKER, read_finished, train_student
from tests.conftest import SMOLLM

pytestmark = pytest.mark.slow


def _records(n: int = 6) -> list[list[dict[str, str]]]:
    out = []
    for i in range(n):
        a, b = 3 + i, 4 + 2 * i
        out.append([{"role": "system", "content": "Solve the math word problem."},
                    {"role": "user", "content": f"Ana has {a} apples. Ana buys {b} more apples. "
                                                "How many apples does Ana have now?"},
                    {"role": "assistant", "content": f"{a} + {b} = {a + b}. "
                                                     f"The answer is {a + b}."}])
    return out


def _cfg(**kw) -> TrainingConfig:
    base = dict(max_steps=2, batch_size=2, max_length=128, save_steps=1, logging_steps=1,
                dtype="fp32", learning_rate=1e-3)
    return TrainingConfig(**(base | kw))


def test_packed_row_scores_each_example_as_if_alone(smollm_fp32):
    """Padding-free packing: position ids restart per example and the model (sdpa) keeps
    examples from attending to each other, so a packed row's logits equal separate passes.
    transformers derives the block mask from position ids only without a KV cache, which is how
    TRL calls the model in training (use_cache=False)."""
    tok = smollm_fp32.tokenizer
    examples = tokenize_records(tok, _records(2), max_length=128).examples
    model = smollm_fp32.model
    with torch.inference_mode():
        alone = [model(input_ids=torch.tensor([e.input_ids])).logits[0] for e in examples]
        ids = torch.tensor([examples[0].input_ids + examples[1].input_ids])
        positions = torch.tensor(list(range(len(examples[0].input_ids)))
                                 + list(range(len(examples[1].input_ids))))[None]
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
    n0 = len(examples[0].input_ids)
    assert torch.allclose(packed[:n0], alone[0], atol=1e-4)
    assert torch.allclose(packed[n0:], alone[1], atol=1e-4)
    # Without restarting positions (plain concatenation) the second example would differ.
    with torch.inference_mode():
        leaky = model(input_ids=ids, use_cache=False).logits[0]
    assert not torch.allclose(leaky[n0:], alone[1], atol=1e-2)


def test_trl_packs_our_examples_without_losing_supervised_tokens(smollm_fp32, tmp_path):
    from trl import SFTTrainer

    from distill_dag.training.objectives.sft import sft_config, to_dataset
    from distill_dag.training.train import trainer_arguments

    tok = smollm_fp32.tokenizer
    tokenized = tokenize_records(tok, _records(6), max_length=128)
    cfg = _cfg()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm_fp32.resolved.hf_dir)
    args = sft_config(trainer_arguments(cfg, tmp_path, "cpu", False), cfg.max_length, True)
    trainer = SFTTrainer(model=model, args=args,
                         train_dataset=to_dataset(tokenized), processing_class=tok)
    packed = trainer.train_dataset
    assert len(packed) < len(tokenized.examples)  # several examples per row
    assert sum(len(r) for r in packed["input_ids"]) == tokenized.tokens
    batch = trainer.data_collator([packed[i] for i in range(len(packed))])
    # The collator masks each example's first token; our first tokens are prompt tokens anyway.
    assert int((batch["labels"] != -100).sum()) == tokenized.supervised_tokens
    assert "attention_mask" not in batch and "position_ids" in batch  # padding-free


def test_packing_auto_packs_only_with_a_varlen_attention_kernel(smollm_fp32):
    from types import SimpleNamespace

    from distill_dag.training.train import use_packing

    assert smollm_fp32.model.config._attn_implementation == "sdpa"
    assert use_packing(TrainingConfig(), smollm_fp32.model) is False
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    assert use_packing(TrainingConfig(), flash) is True
    assert use_packing(TrainingConfig(packing=True), smollm_fp32.model) is True
    assert use_packing(TrainingConfig(packing=False), flash) is False


@pytest.mark.parametrize("method,packing", [("lora", False), ("full", True)])
def test_checkpoint_round_trip_gives_the_same_logits(tmp_path, method, packing):
    result = train_student(_records(), SMOLLM, _cfg(method=method, packing=packing),
                           tmp_path / method,
                           info={"dataset_version": "abc"}, device="cpu", show_progress=False,
                           keep_model=True)
    assert result.trained_now and result.global_step == 2 and result.steps_run == 2
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(result.path)  # one line, no adapter config
    tok = AutoTokenizer.from_pretrained(result.path)
    assert tok.chat_template  # the template the student was trained with travels along
    ids = tok.apply_chat_template(_records(1)[0], return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        expected = result.model.eval()(**ids).logits
        got = loaded.eval()(**ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    # Training changed the weights (the checkpoint is not the base model).
    from distill_dag.models import load_model

    with torch.inference_mode():
        base = load_model(SMOLLM, "cpu", "fp32").model(**ids).logits
    assert not torch.allclose(got, base, atol=1e-3)
    marker = json.loads((result.path / MARKER).read_text())
    assert marker["dataset_version"] == "abc" and marker["method"] == method
    assert marker["checkpoint_hash"] == result.checkpoint_hash
    assert not (result.path / "adapter_config.json").exists()  # LoRA is merged


def test_one_epoch_trains_on_every_supervised_token_once(tmp_path, smollm_fp32):
    cfg = TrainingConfig(epochs=1, batch_size=2, max_length=128, save_steps=100, dtype="fp32")
    result = train_student(_records(), SMOLLM, cfg, tmp_path, device="cpu", show_progress=False)
    expected = tokenize_records(smollm_fp32.tokenizer, _records(), 128).supervised_tokens
    assert result.supervised_tokens_trained == expected == result.supervised_tokens_per_epoch
    assert not (tmp_path / "trainer").exists()  # resumable state is dropped once finished


def test_a_checkpoint_killed_mid_save_is_skipped(tmp_path):
    from distill_dag.training.train import last_complete_checkpoint

    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-3").mkdir()  # weights written, trainer_state.json never was
    assert last_complete_checkpoint(tmp_path).endswith("checkpoint-2")
    assert not (tmp_path / "checkpoint-3").exists()
    assert last_complete_checkpoint(tmp_path / "checkpoint-2") is None  # no checkpoints inside


def test_a_finished_run_is_reused_without_training(tmp_path, capfd):
    entries: list[dict] = []
    first = train_student(_records(), SMOLLM, _cfg(max_steps=1), tmp_path, device="cpu",
                          show_progress=True, on_log=entries.append)
    printed = capfd.readouterr()
    # One entry per logged step reaches on_log; transformers' progress bar stays, but it no
    # longer prints its own dict of the same step.
    assert [e["step"] for e in entries if "loss" in e] == [1]
    assert "1/1" in printed.err and "'loss'" not in printed.out + printed.err
    again = train_student(_records(), SMOLLM, _cfg(max_steps=1), tmp_path, device="cpu",
                          show_progress=False)
    assert first.trained_now and not again.trained_now
    assert again.checkpoint_hash == first.checkpoint_hash and again.steps_run == 0


def test_a_crash_mid_training_resumes_from_the_last_saved_step(tmp_path):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("simulated crash at step 3")

    cfg = _cfg(max_steps=4, save_steps=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_student(_records(), SMOLLM, cfg, tmp_path, device="cpu", show_progress=False,
                      callbacks=[Crash()])
    assert read_finished(tmp_path / "model") is None  # no half-written checkpoint registered
    assert (tmp_path / "trainer" / "checkpoint-2").is_dir()
    result = train_student(_records(), SMOLLM, cfg, tmp_path, device="cpu", show_progress=False)
    assert result.resumed_from_step == 2  # the saved step is kept, not retrained
    assert result.steps_run == 2 and result.global_step == 4
    losses = [h["step"] for h in result.loss_history if "loss" in h]
    assert losses == [1, 2, 3, 4]  # the log history survives the crash too


def test_zero_records_fails_before_loading_the_model(tmp_path):
    from distill_dag.training.data import TrainingDataError

    with pytest.raises(TrainingDataError, match="0 records"):
        train_student([], SMOLLM, _cfg(), tmp_path, device="cpu", show_progress=False)
    assert not (tmp_path / "model").exists()


def test_unresolvable_student_is_a_clear_error(tmp_path):
    from distill_dag.models import ModelResolutionError

    with pytest.raises(ModelResolutionError, match="does not resolve"):
        train_student(_records(), str(tmp_path / "no-such-model"), _cfg(), tmp_path / "run",
                      device="cpu", show_progress=False)


def test_config_validation_names_the_field():
    from distill_dag.configbase import ConfigError

    with pytest.raises(ConfigError, match="training: method must be one of"):
        TrainingConfig.from_dict({"method": "qlora"})
    with pytest.raises(ConfigError, match=r"lora.r must be an integer >= 1"):
        TrainingConfig.from_dict({"lora": {"r": 0}})
    with pytest.raises(ConfigError, match="unknown key"):
        TrainingConfig.from_dict({"epoch": 2})
    assert TrainingConfig(save_steps=5).fingerprint() == TrainingConfig(save_steps=7).fingerprint()
    assert TrainingConfig(epochs=2).fingerprint() == TrainingConfig(epochs=2.0).fingerprint()
    with pytest.raises(ConfigError, match="lr_scheduler must be one of"):
        TrainingConfig.from_dict({"lr_scheduler": "cosin"})
    from transformers.trainer_utils import SchedulerType

    from distill_dag.training.config import LR_SCHEDULERS

    assert set(LR_SCHEDULERS) <= {s.value for s in SchedulerType}
    assert TrainingConfig(epochs=1).fingerprint() != TrainingConfig(epochs=2).fingerprint()


def test_default_sft_run_keys_are_those_from_before_the_objective_knob():
    """Pinned: training.fingerprint() is part of the checkpoint's run key, so a change here
    retrains every finished checkpoint instead of reusing it."""
    assert TrainingConfig().fingerprint() == "c9e5954ee68a21cc"
    assert TrainingConfig(num_processes=2).fingerprint() == "a581bc8667b5f0c5"
    assert TrainingConfig(objective="sft", logging_steps=7, save_steps=3).fingerprint() == (
        "c9e5954ee68a21cc")
    assert TrainingConfig.from_dict({"method": "full", "lora": {"r": 8}, "packing": True,
                                     "max_steps": 5}).fingerprint() == "1a604dd5c382a73c"


def test_an_unknown_objective_names_the_known_ones():
    from dataclasses import fields

    from distill_dag.configbase import ConfigError
    from distill_dag.training.objectives import OBJECTIVES

    known = re.escape(str(sorted(OBJECTIVES)))
    assert {"sft", "kd", "on_policy", "redi"} <= set(OBJECTIVES)
    with pytest.raises(ConfigError,
                       match=rf"training: objective must be one of {known}, got 'gkd'"):
        TrainingConfig.from_dict({"objective": "gkd"})
    with pytest.raises(ConfigError, match="unknown key"):  # an unregistered objective's block
        TrainingConfig.from_dict({"gkd": {"beta": 0.5}})
    # An objective's block is written at training.<name>: a name must not shadow a field.
    assert not set(OBJECTIVES) & {f.name for f in fields(TrainingConfig)}


def test_sft_reads_filtered_datasets_chat_records(tmp_path):
    import polars as pl

    from distill_dag import tables
    from distill_dag.store import Store
    from distill_dag.training.objectives import ObjectiveInputs, get_objective

    sft = get_objective("sft")
    assert sft.reads == (tables.FILTERED_DATASET,)
    frame = pl.DataFrame({"messages": _records(2), "teacher": ["a", "b"]})
    store = Store(tmp_path)
    store.write_table(tables.FILTERED_DATASET, frame)
    data = sft.records(ObjectiveInputs(store, project=None), None)
    assert data.records == _records(2) and data.version is None


class _Refused(Exception):
    pass


def _toy_objective():
    """A second objective, registered the one way there is: its own Settings and version."""
    from dataclasses import dataclass

    from distill_dag.configbase import Config, check_number, setting
    from distill_dag.training.objectives import Objective

    @dataclass
    class ToySettings(Config):
        alpha: float = setting(0.5, "A loss weight in [0, 1].")
        verbose: bool = setting(False, "Logging only.", output=False)

        def __post_init__(self) -> None:
            check_number("alpha", self.alpha, 0.0, 1.0)

    class Toy(Objective):
        name = "toy"
        reads = ("negatives",)
        Settings = ToySettings

        def records(self, inputs, settings):
            from distill_dag.training.objectives import ObjectiveData

            return ObjectiveData(inputs.table("negatives")["response"].to_list())

        def prepare(self, tokenizer, records, max_length):
            raise _Refused(f"toy prepare: {len(records)} records, max_length {max_length}")

        def trainer(self, job):
            raise AssertionError("prepare refuses first")

    return Toy()


@pytest.fixture
def toy(monkeypatch):
    from distill_dag.training import objectives

    objective = _toy_objective()
    monkeypatch.setitem(objectives.OBJECTIVES, "toy", objective)
    return objective


def test_an_objective_brings_its_own_settings_and_run_key(toy, monkeypatch):
    import dataclasses

    from distill_dag.configbase import ConfigError

    cfg = TrainingConfig.from_dict({"objective": "toy", "toy": {"alpha": 0.25}})
    assert cfg.objective_settings() == toy.Settings(alpha=0.25)
    default = TrainingConfig.from_dict({"objective": "toy"})
    assert default.objective_settings() == toy.Settings()
    sft = TrainingConfig().fingerprint()
    assert len({sft, default.fingerprint(), cfg.fingerprint()}) == 3
    # A setting the objective declares output=False keys no new run.
    verbose = TrainingConfig.from_dict({"objective": "toy", "toy": {"verbose": True}})
    assert verbose.fingerprint() == default.fingerprint()
    # Another objective's block is checked, but only the selected objective's enters the key.
    assert TrainingConfig.from_dict({"toy": {"alpha": 0.25}}).fingerprint() == sft
    with pytest.raises(ConfigError, match=r"training\.toy: alpha must be in \[0\.0, 1\.0\]"):
        TrainingConfig.from_dict({"objective": "toy", "toy": {"alpha": 2}})
    with pytest.raises(ConfigError, match=r"training\.toy\.alphas: unknown key"):
        TrainingConfig.from_dict({"toy": {"alphas": 1}})
    with pytest.raises(ConfigError, match=r"training\.sft: objective 'sft' has no settings"):
        TrainingConfig.from_dict({"sft": {}})
    # Bumping the objective's version retrains (a new run key), as a changed loss must.
    version_1 = default.fingerprint()
    monkeypatch.setattr(toy, "version", "2", raising=False)
    assert default.fingerprint() != version_1
    # The data-parallel launcher hands the config to its workers as JSON.
    assert TrainingConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg


def test_train_student_trains_through_the_selected_objective(toy, tmp_path):
    cfg = TrainingConfig(objective="toy", max_length=64)
    with pytest.raises(_Refused, match="toy prepare: 2 records, max_length 64"):
        train_student(["a", "b"], SMOLLM, cfg, tmp_path, device="cpu", show_progress=False)
    with pytest.raises(_Refused):  # data-parallel: checked once, before any worker starts
        train_student(["a", "b"], SMOLLM, TrainingConfig(objective="toy", num_processes=2),
                      tmp_path / "dp", device="cpu", show_progress=False)
    assert not (tmp_path / "dp" / "launch").exists()


def test_one_log_line_per_logged_step_and_back():
    from distill_dag.training.progress import parse_step_line, step_line

    entry = {"step": 3, "loss": 0.927192, "grad_norm": 2.39412, "learning_rate": 0.001,
             "epoch": 0.66667, "total_flos": 1.5e9}
    line = step_line(entry, 40)
    assert line == ("training step 3/40: {'loss': 0.9272, 'grad_norm': 2.394, "
                    "'learning_rate': 0.001, 'epoch': 0.6667}")
    assert parse_step_line(line) == {"step": 3, "loss": 0.9272, "grad_norm": 2.394,
                                     "learning_rate": 0.001, "epoch": 0.6667}
    summary = step_line({"step": 40, "train_runtime": 33.78, "train_loss": 0.9366}, 40)
    assert summary == ("training finished at step 40/40: {'train_runtime': 33.78, "
                       "'train_loss': 0.9366}")
    assert parse_step_line(summary)["train_loss"] == 0.9366
    assert parse_step_line("[rank0]: {'loss': 1}") is None
    assert parse_step_line("training step 1/2: {'loss': oops}") is None


def test_building_a_lora_trainer_warns_of_nothing_deprecated(smollm_fp32, tmp_path):
    """Our trainer arguments use transformers 5's names (activation_checkpointing), and
    without a progress bar transformers prints no dict of its own either."""
    import warnings

    from transformers import AutoModelForCausalLM
    from transformers.trainer_callback import PrinterCallback

    from distill_dag.training.train import build_trainer

    tok = smollm_fp32.tokenizer
    tokenized = tokenize_records(tok, _records(2), max_length=128)
    model = AutoModelForCausalLM.from_pretrained(smollm_fp32.resolved.hf_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        trainer = build_trainer(_cfg(method="lora"), model, tok, tokenized, tmp_path, "cpu",
                                False)
    assert trainer.args.activation_checkpointing is False
    assert trainer.args.gradient_checkpointing is False  # TRL's default would be True
    assert not any(isinstance(cb, PrinterCallback) for cb in trainer.callback_handler.callbacks)


def test_two_data_parallel_processes_share_each_epoch(tmp_path, smollm_fp32):
    """num_processes=2 runs two real torchrun workers (gloo on CPU): each batch is split across
    them, so an epoch takes half the optimizer steps and every supervised token is still trained
    on exactly once (not once per process); rank 0 writes a loadable folder."""
    from transformers import AutoModelForCausalLM

    entries: list[dict] = []
    cfg = TrainingConfig(epochs=1, batch_size=2, max_length=128, save_steps=100, dtype="fp32",
                         num_processes=2)
    result = train_student(_records(8), SMOLLM, cfg, tmp_path, device="cpu", show_progress=False,
                           on_log=entries.append)
    lines = [entry.get("output", "") for entry in entries]
    expected = tokenize_records(smollm_fp32.tokenizer, _records(8), 128).supervised_tokens
    assert result.trained_now and result.global_step == 2  # 8 examples / (2 x 2 per step)
    assert result.supervised_tokens_trained == expected
    assert any("'loss'" in line for line in lines)  # the workers' log reached the caller
    # One line per logged step (rank 0's), parsed back into the entry a single process gives.
    assert [e["step"] for e in entries if "loss" in e] == [1, 2]
    assert sum("'loss'" in line for line in lines) == 2
    assert read_finished(result.path)["checkpoint_hash"] == result.checkpoint_hash
    AutoModelForCausalLM.from_pretrained(result.path)
    assert cfg.fingerprint() != TrainingConfig(epochs=1, batch_size=2, max_length=128,
                                               save_steps=100, dtype="fp32").fingerprint()
    again = train_student(_records(8), SMOLLM, cfg, tmp_path, device="cpu", show_progress=False)
    assert not again.trained_now and again.checkpoint_hash == result.checkpoint_hash


def test_data_parallel_checks_records_and_model_before_launching(tmp_path):
    from distill_dag.models import ModelResolutionError
    from distill_dag.training.data import TrainingDataError

    cfg = _cfg(num_processes=2)
    with pytest.raises(ModelResolutionError, match="does not resolve"):
        train_student(_records(), str(tmp_path / "no-such-model"), cfg, tmp_path / "a",
                      device="cpu", show_progress=False)
    with pytest.raises(TrainingDataError, match="0 records"):
        train_student([], SMOLLM, cfg, tmp_path / "b", device="cpu", show_progress=False)
    assert not (tmp_path / "a" / "launch").exists() and not (tmp_path / "b" / "launch").exists()


def test_a_worker_failing_mid_training_is_named_in_the_error(tmp_path):
    """A real failure inside trainer.train (the step-1 checkpoint path is taken by a file):
    the error names the worker's exception, which torch prints as "[rank0]: ..." lines."""
    from distill_dag.training.launch import TrainingLaunchError

    (tmp_path / "trainer").mkdir(parents=True)
    (tmp_path / "trainer" / "checkpoint-1").write_text("in the way")
    with pytest.raises(TrainingLaunchError) as info:
        train_student(_records(8), SMOLLM, _cfg(num_processes=2, save_steps=1), tmp_path,
                      device="cpu", show_progress=False)
    head = str(info.value).split("; saved steps")[0]
    assert "2 processes failed" in head and "Error" in head, head
    assert read_finished(tmp_path / "model") is None


def test_first_exception_skips_torchrun_summaries_and_rank_prefixes():
    from distill_dag.training.launch import first_exception

    lines = ["[rank1]: Traceback (most recent call last):",
             "[rank1]:   File \"x.py\", line 3, in <module>",
             "[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
             "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
             "ValueError: later"]
    assert first_exception(lines) == ("torch.OutOfMemoryError: CUDA out of memory. Tried to "
                                      "allocate 2.00 GiB")
    assert first_exception(["ChildFailedError: x", "all good"]) is None


def test_killing_the_step_stops_the_data_parallel_workers(tmp_path):
    """SIGKILL the process that launched the workers (what Dagster's run monitor does to a run
    past its max runtime): torchrun gets SIGTERM from the kernel and stops its workers, so no
    orphan trains on into the run folder. The workers print nothing (no progress bars, warnings
    or loss lines): a write to the dead step's pipe would end them anyway, and would hide a
    missing death signal."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    script = tmp_path / "step.py"
    script.write_text(textwrap.dedent(f"""
        from tests.test_training import _cfg, _records
        from distill_dag.training.train import train_student
        cfg = _cfg(num_processes=2, max_steps=10000, save_steps=10000, logging_steps=10000)
        train_student(_records(8), {SMOLLM!r}, cfg, {str(tmp_path / "run")!r}, device="cpu",
                      show_progress=False)
    """))
    root = str(Path(__file__).parents[1])
    step = subprocess.Popen([sys.executable, str(script)], cwd=root,
                            env=dict(os.environ, PYTHONPATH=root, TQDM_DISABLE="1",
                                     PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error",
                                     HF_DATASETS_DISABLE_PROGRESS_BARS="1"))

    def workers() -> list[int]:
        found = []
        for pid in os.listdir("/proc"):
            try:
                cmd = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if str(tmp_path / "run").encode() in cmd and int(pid) != step.pid:
                found.append(int(pid))
        return found

    deadline = time.time() + 120
    while len(workers()) < 3 and time.time() < deadline:  # torchrun + 2 ranks
        time.sleep(0.5)
    assert len(workers()) >= 3, "the workers never started"
    time.sleep(3)
    os.kill(step.pid, signal.SIGKILL)
    step.wait()
    deadline = time.time() + 20  # torchrun stops its workers within seconds of the signal
    while workers() and time.time() < deadline:
        time.sleep(0.5)
    left = workers()
    for pid in left:  # never leave orphans behind, even when the test fails
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert left == []
    assert read_finished(tmp_path / "run" / "model") is None
