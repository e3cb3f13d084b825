"""The seven assets materialized in-process with Dagster on the tiny config and the real model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from distill_dag.orchestration.definitions import build_definitions, materialize_all
from distill_dag.stages import STAGES
from distill_dag.store import Store
from tests.conftest import TINY_CONFIG

ASSETS = [s.name for s in STAGES]  # the declared stages (tests/test_stages.py pins the order)


def _materializations(results) -> dict[tuple[str, str | None], dict]:
    found = {}
    for result in results:
        for event in result.get_asset_materialization_events():
            mat = event.materialization
            found[(mat.asset_key.to_user_string(), mat.partition)] = {
                k: v.value for k, v in mat.metadata.items()} | {"_tags": mat.tags or {}}
    return found


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    defs = build_definitions(TINY_CONFIG, home=str(home), device="cpu", show_progress=False)
    with dg.instance_for_test() as instance:
        first = materialize_all(defs, instance)
        second = materialize_all(defs, instance)
        checks = [e for r in first for e in r.get_asset_check_evaluations()]
    yield home, _materializations(first), _materializations(second), checks
    shutil.rmtree(home, ignore_errors=True)  # a checkpoint of ~0.5 GB; not kept past the module


def test_all_seven_assets_and_both_partitions_materialize(tiny_run):
    _, first, _, checks = tiny_run
    assert {k for k, _ in first} == set(ASSETS)
    assert {p for k, p in first if k == "teacher_outputs"} == {"fewshot", "zeroshot"}
    failed = [(c.asset_key.to_user_string(), c.check_name) for c in checks if not c.passed
              and c.severity == dg.AssetCheckSeverity.ERROR]
    assert not failed
    names = {c.check_name for c in checks}
    assert {"no_eval_leakage", "all_samples_present", "all_sentences_scored", "not_empty",
            "no_eval_queries", "chat_schema", "hf_folder", "loss_decreased",
            "distilled_beats_base"} <= names
    assert names == {c.name for s in STAGES for c in s.checks}  # every declared check reports


def test_tables_hold_what_the_metadata_says(tiny_run):
    home, first, _, _ = tiny_run
    store = Store(Path(home) / "store")
    queries = store.read_table("queries")
    train = queries.filter(pl.col("split") == "train")
    outputs = store.read_table("teacher_outputs")
    assert outputs.height == 2 * 2 * train.height  # 2 teachers x k=2 x train queries
    assert first[("query_corpus", None)]["dagster/row_count"] == queries.height
    assert set(outputs["query_id"]) <= set(train["query_id"])  # eval queries never generated
    sentences = store.read_table("provenance_sentences")
    assert sentences.height == first[("provenance_scores", "fewshot")]["dagster/row_count"] + \
        first[("provenance_scores", "zeroshot")]["dagster/row_count"]
    # zeroshot's teacher is the student model in the student's own context: dTS is ~0.
    zero = sentences.filter(pl.col("teacher") == "zeroshot")
    assert zero["d_ts"].abs().mean() < 0.02
    metrics = store.read_table("teacher_metrics")
    assert metrics["chosen"].sum() == 1
    chosen = metrics.filter("chosen")["teacher"][0]
    assert first[("teacher_selection", None)]["chosen"] == chosen


def test_filtered_dataset_is_trainable_chat_records(tiny_run):
    home, first, _, _ = tiny_run
    meta = first[("filtered_dataset", None)]
    path = Path(meta["jsonl_path"])
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == meta["dagster/row_count"] > 0
    store = Store(Path(home) / "store")
    eval_ids = set(store.read_table("queries").filter(pl.col("split") == "eval")["query_id"])
    for record in records:
        roles = [m["role"] for m in record["messages"]]
        assert roles[-2:] == ["user", "assistant"] and record["messages"][-1]["content"]
        assert record["query_id"] not in eval_ids
    assert Path(path.parent / "train.parquet").exists()
    assert store.read_table("negatives").height > 0  # incorrect samples kept for later use


def test_second_run_generates_and_scores_nothing_and_keeps_data_versions(tiny_run):
    _, first, second, _ = tiny_run
    for partition in ("fewshot", "zeroshot"):
        assert second[("teacher_outputs", partition)]["generated_now"] == 0
        assert second[("teacher_outputs", partition)]["tokens_generated_now"] == 0
        assert second[("provenance_scores", partition)]["scored_now"] == 0
    for key, meta in first.items():
        assert meta["_tags"]["dagster/data_version"] == \
            second[key]["_tags"]["dagster/data_version"], key


def test_checkpoint_is_a_loadable_folder_and_the_report_is_complete(tiny_run):
    from transformers import AutoModelForCausalLM

    home, first, _, _ = tiny_run
    ckpt = first[("distilled_checkpoint", None)]
    path = Path(ckpt["path"])
    assert ckpt["trained_now"] and ckpt["global_step"] == 2
    assert ckpt["dataset_version"] == \
        first[("filtered_dataset", None)]["_tags"]["dagster/data_version"]
    assert ckpt["_tags"]["dagster/data_version"] == ckpt["checkpoint_hash"]
    AutoModelForCausalLM.from_pretrained(path)  # loads in one line
    report = first[("eval_report", None)]
    # Its model card (huggingface_hub reads it): what it is, and eval_report's table.
    from huggingface_hub import ModelCard

    card = ModelCard.load(str(path / "README.md"))
    facts = card.data.to_dict()["distill_dag"]
    assert (facts["base_model"], facts["objective"], facts["data_version"]) == (
        "pkg:smollm2-135m-instruct", "sft", ckpt["dataset_version"])
    assert card.data.pipeline_tag == "text-generation" and set(facts["teachers"]) <= {
        "fewshot", "zeroshot"}
    assert "| pass@1_greedy |" in card.text and str(report["distilled/pass@1_greedy"]) in card.text
    text = Path(report["report_path"]).read_text()
    assert "gain (distilled - base)" in text and "Test-time provenance" in text
    for key in ("base/pass@1_greedy", "distilled/pass@1_greedy", "gain/pass@1",
                "gain/pass@1_ci_low", "gain/pass@1_ci_high", "base/pass@2", "distilled/mean@2"):
        assert isinstance(report[key], float), key
    assert report["gain/pass@1_ci_low"] <= report["gain/pass@1"] <= report["gain/pass@1_ci_high"]
    assert "data:image/png;base64," in report["plots"]
    store = Store(Path(home) / "store")
    answers = store.read_table("eval_answers")
    assert set(answers["model"]) == {"base", "distilled"}
    eval_ids = set(store.read_table("queries").filter(pl.col("split") == "eval")["query_id"])
    assert set(answers["query_id"]) == eval_ids
    # Both MLflow runs (training with its loss curve, evaluation) are in the local database.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{Path(home).resolve()}/mlflow/mlflow.db")
    train_run = client.get_run(ckpt["mlflow_run_id"])
    assert train_run.data.params["dataset_version"] == ckpt["dataset_version"]
    assert len(client.get_metric_history(train_run.info.run_id, "loss")) == 2
    eval_run = client.get_run(report["mlflow_run_id"])
    assert [a.path for a in client.list_artifacts(eval_run.info.run_id, "eval_report")]


def test_second_run_trains_and_evaluates_nothing(tiny_run):
    _, _, second, _ = tiny_run
    assert second[("distilled_checkpoint", None)]["trained_now"] is False
    assert second[("eval_report", None)]["generated_now"] == 0


def _failure_text(result) -> str:
    return "\n".join(str(e.event_specific_data.error) for e in result.all_events
                     if e.is_step_failure)


def test_empty_corpus_fails_the_asset_with_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": ""}\n{not json\n{"question": "x"}\n')
    config = tmp_path / "config.yaml"
    config.write_text(f"corpus: {{files: [{{path: {bad}}}]}}\n"
                      "teachers: [{name: t, model: pkg:smollm2-135m-instruct}]\n")
    defs = build_definitions(config, home=str(tmp_path / "home"), show_progress=False)
    result = dg.materialize(list(defs.assets), selection=["query_corpus"],
                            resources=defs.resources, raise_on_error=False)
    assert not result.success
    text = _failure_text(result)
    assert "no usable training queries: read 3 rows, 3 quarantined" in text
    assert "bad.jsonl" in text or "malformed JSON" in text or "empty prompt" in text


def test_unresolvable_teacher_model_fails_naming_the_teacher(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("corpus: {generator: {n: 6, seed: 1}}\n"
                      "teachers: [{name: ghost, model: /no/such/model}]\n")
    defs = build_definitions(config, home=str(tmp_path / "home"), show_progress=False)
    with dg.instance_for_test() as instance:
        dg.materialize(list(defs.assets), selection=["query_corpus"], instance=instance,
                       resources=defs.resources)
        result = dg.materialize(list(defs.assets), selection=["teacher_outputs"],
                                partition_key="ghost", instance=instance,
                                resources=defs.resources, raise_on_error=False)
    assert not result.success
    text = _failure_text(result)
    assert "ghost" in text and "/no/such/model" in text and "does not resolve" in text


def test_dagster_cli_materializes_the_corpus(tmp_path):
    env = dict(os.environ, DISTILL_DAG_CONFIG=str(TINY_CONFIG),
               DISTILL_DAG_HOME=str(tmp_path / "home"), DAGSTER_HOME=str(tmp_path / "dh"))
    (tmp_path / "dh").mkdir()
    dagster = Path(sys.executable).parent / "dagster"
    proc = subprocess.run([str(dagster), "asset", "materialize", "-m", "distill_dag.definitions",
                           "--select", "query_corpus"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = Store(tmp_path / "home" / "store")
    assert store.read_table("queries").height > 0


def test_data_versions_follow_content(tiny_run, tmp_path):
    """An edit that changes the training records (the student's system prompt) changes the
    filtered_dataset data version and its export, without generating anything."""
    import yaml

    home, first, _, _ = tiny_run
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["student"]["prompt"]["system"] = "Think, then answer."
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(config))
    defs = build_definitions(edited, home=str(home), device="cpu", show_progress=False)
    with dg.instance_for_test() as instance:
        result = dg.materialize(list(defs.assets), selection=["filtered_dataset"],
                                instance=instance, resources=defs.resources)
    [event] = result.get_asset_materialization_events()
    meta = event.materialization.metadata
    before = first[("filtered_dataset", None)]
    assert event.materialization.tags["dagster/data_version"] != \
        before["_tags"]["dagster/data_version"]
    assert meta["jsonl_path"].value != before["jsonl_path"]  # the old export is left intact
    assert Path(before["jsonl_path"]).exists()
    record = json.loads(Path(meta["jsonl_path"].value).read_text().splitlines()[0])
    assert record["messages"][0] == {"role": "system", "content": "Think, then answer."}


def test_sample_curation_runs_the_student_once_and_reports_what_it_removed(tiny_run, tmp_path):
    """The difficulty band (the base student's own pass rate), concise traces and diverse
    picks, materialized on the tiny run's store: the student's answers are generated once."""
    import yaml

    home = tiny_run[0]
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["filtering"].update(
        difficulty={"num_samples": 2, "max_new_tokens": 16, "max_pass_rate": 0.0},
        concise_ratio=1.5, per_query=2, diversity="edit")
    edited = tmp_path / "curated.yaml"
    edited.write_text(yaml.safe_dump(config))
    defs = build_definitions(edited, home=str(home), device="cpu", show_progress=False)
    runs = []
    with dg.instance_for_test() as instance:
        for _ in range(2):
            runs.append(dg.materialize(list(defs.assets), selection=["filtered_dataset"],
                                       instance=instance, resources=defs.resources))
    metas = [r.get_asset_materialization_events()[0].materialization.metadata for r in runs]
    store = Store(Path(home) / "store")
    difficulty = store.read_table("student_difficulty")
    assert set(difficulty["student_samples"]) == {2}
    assert metas[0]["difficulty_generated_now"].value == 2 * difficulty.height
    assert metas[1]["difficulty_generated_now"].value == 0
    dataset = store.read_table("filtered_dataset")
    solved = set(difficulty.filter(pl.col("student_pass_rate") > 0)["query_id"])
    assert not solved & set(dataset["query_id"])  # max_pass_rate 0: only unsolved queries
    # Only queries a chosen teacher answered correctly were put to the student.
    outputs = store.query("SELECT query_id, correct FROM teacher_outputs WHERE teacher IN "
                          "(SELECT teacher FROM teacher_metrics WHERE chosen)")
    answered = set(outputs.filter(pl.col("correct"))["query_id"])
    assert set(difficulty["query_id"]) == answered
    easy = metas[0].get("removed/too_easy_for_student")
    assert (easy.value if easy else 0) >= len(solved)  # one sample or more per solved query
    assert metas[0]["removed_share/difficulty"].value == pytest.approx(len(solved) / len(answered))
    assert "removed_share/concise" in metas[0]
    assert dataset.group_by("query_id").len()["len"].max() <= 2
    checks = {c.check_name: c for c in runs[0].get_asset_check_evaluations()}
    share = checks["removal_share"]
    assert share.metadata["removed_share_difficulty"].value == \
        metas[0]["removed_share/difficulty"].value
    assert share.passed == (len(solved) / len(answered) <= 0.8)


def test_a_config_edited_after_loading_stops_the_run(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(TINY_CONFIG.read_text())
    defs = build_definitions(config, home=str(tmp_path / "home"), show_progress=False)
    config.write_text(TINY_CONFIG.read_text().replace("n: 16", "n: 17"))
    result = dg.materialize(list(defs.assets), selection=["query_corpus"],
                            resources=defs.resources, raise_on_error=False)
    assert not result.success
    assert "changed since the code location loaded it" in _failure_text(result)


def test_chat_template_check_catches_a_template_that_drops_the_answer():
    from distill_dag.stages.filtered_dataset import template_problems as _template_problems

    class DropsAssistant:  # a stand-in tokenizer whose template forgets assistant turns
        chat_template = "drops the assistant"

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
            return "".join(f"<{m['role']}>{m['content']}" for m in messages
                           if m["role"] != "assistant")

    good = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4."}]
    [problem] = _template_problems(DropsAssistant(), [good])
    assert problem.startswith("record 0: the chat template drops the assistant's content")
    from distill_dag.models import load_model
    from tests.conftest import SMOLLM

    assert _template_problems(load_model(SMOLLM, "cpu", "fp32").tokenizer, [good]) == []
    assert _template_problems(DropsAssistant(), [[good[0]]])[0].startswith(
        "record 0: the last turn of 'messages' must be the assistant's reply")


def _prepared_home(tmp_path, config_text: str, records: int):
    """A home whose store holds `records` training records, and definitions for `config_text`."""
    from distill_dag.filtering import _messages
    from distill_dag.generation.config import PromptConfig

    store = Store(tmp_path / "home" / "store")
    messages = [_messages(PromptConfig(style="chat"), f"What is {i} + 1?", f"{i} + 1 = {i + 1}."
                          f" The answer is {i + 1}.") for i in range(records)]
    store.write_table("filtered_dataset", pl.DataFrame({
        "query_id": [f"q{i}" for i in range(records)], "teacher": ["t"] * records,
        "messages": messages}, schema_overrides={"messages": pl.List(pl.Struct(
            {"role": pl.Utf8, "content": pl.Utf8}))}))
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    return build_definitions(config, home=str(tmp_path / "home"), device="cpu",
                             show_progress=False), store


def test_empty_filtered_dataset_fails_and_registers_no_checkpoint(tmp_path):
    defs, store = _prepared_home(tmp_path, TINY_CONFIG.read_text(), records=0)
    result = dg.materialize(list(defs.assets), selection=["distilled_checkpoint"],
                            resources=defs.resources, raise_on_error=False)
    assert not result.success
    assert "filtered_dataset has 0 rows" in _failure_text(result)
    assert not store.table_exists("distilled_checkpoint")


def test_unresolvable_student_fails_the_training_step(tmp_path):
    text = TINY_CONFIG.read_text().replace("student:\n  model: pkg:smollm2-135m-instruct",
                                           "student:\n  model: /no/such/student")
    assert "/no/such/student" in text
    defs, store = _prepared_home(tmp_path, text, records=2)
    result = dg.materialize(list(defs.assets), selection=["distilled_checkpoint"],
                            resources=defs.resources, raise_on_error=False)
    assert not result.success
    failure = _failure_text(result)
    assert "student" in failure and "/no/such/student" in failure and "does not resolve" in failure
    assert not store.table_exists("distilled_checkpoint")


def test_unreachable_mlflow_fails_before_training(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = TINY_CONFIG.read_text() + (f"tracking: {{tracking_uri: 'http://127.0.0.1:{port}', "
                                      "timeout_s: 1}\n")
    defs, _ = _prepared_home(tmp_path, text, records=2)
    result = dg.materialize(list(defs.assets), selection=["distilled_checkpoint"],
                            resources=defs.resources, raise_on_error=False)
    assert not result.success
    assert f"127.0.0.1:{port} is unreachable" in _failure_text(result)
    assert not list((tmp_path / "home" / "artifacts").rglob("model.safetensors"))


def test_kd_and_redi_train_from_the_stored_samples_and_top_k(tiny_run, tmp_path):
    """distilled_checkpoint with training.objective kd, then redi after kd, on the tiny run's
    store: the teachers' top-k came with their samples (nothing is recomputed), a changed loss
    knob retrains from them, and redi reuses the kd checkpoint as its first stage."""
    import yaml

    home = tiny_run[0]

    def materialize(training: dict) -> dict:
        config = yaml.safe_load(TINY_CONFIG.read_text())
        config["training"].update(training)
        edited = tmp_path / "objective.yaml"
        edited.write_text(yaml.safe_dump(config))
        defs = build_definitions(edited, home=str(home), device="cpu", show_progress=False)
        with dg.instance_for_test() as instance:
            result = dg.materialize(list(defs.assets), selection=["distilled_checkpoint"],
                                    instance=instance, resources=defs.resources)
        event = result.get_asset_materialization_events()[0]
        return {k: v.value for k, v in event.materialization.metadata.items()}

    records = Store(Path(home) / "store").read_table("filtered_dataset").height
    kd = materialize({"objective": "kd", "kd": {"top_k": 8}})
    assert kd["objective"] == "kd" and kd["trained_now"]
    assert kd["topk_from_sampling_now"] == records  # stored at sampling time (top_logprobs 20)
    assert kd["topk_computed_now"] == 0 and kd["topk_raw_bytes_per_token"] == 20 * 6 + 2
    other = materialize({"objective": "kd", "kd": {"top_k": 8, "divergence": "reverse_kl"}})
    assert other["trained_now"] and other["path"] != kd["path"]  # a new knob, a new checkpoint
    assert other["topk_computed_now"] == 0
    redi = materialize({"objective": "redi", "kd": {"top_k": 8}, "redi": {"after": "kd"}})
    assert redi["objective"] == "redi" and redi["trained_now"]
    assert redi["kd_checkpoint"] == kd["path"] and redi["kd_trained_now"] is False
    assert redi["redi_pairs"] >= 1
    assert redi["redi_queries_with_pairs"] + redi["redi_queries_without_incorrect_sample"] >= 1


def test_on_policy_samples_from_the_student_each_round_and_resumes_from_the_store(
        tiny_run, tmp_path):
    """Two rounds of on-policy distillation on the tiny run's store: round 2 samples from round
    1's checkpoint; the best-ranked chosen teacher grades in its own (few-shot) prompt; a rerun
    samples, grades and trains nothing."""
    import yaml

    home = tiny_run[0]
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["training"].update(objective="on_policy", on_policy={
        "rounds": 2, "samples_per_query": 1, "max_new_tokens": 12, "top_k": 4})
    edited = tmp_path / "on_policy.yaml"
    edited.write_text(yaml.safe_dump(config))
    defs = build_definitions(edited, home=str(home), device="cpu", show_progress=False)
    metas = []
    with dg.instance_for_test() as instance:
        for _ in range(2):
            result = dg.materialize(list(defs.assets), selection=["distilled_checkpoint"],
                                    instance=instance, resources=defs.resources)
            event = result.get_asset_materialization_events()[0]
            metas.append({k: v.value for k, v in event.materialization.metadata.items()})
    store = Store(Path(home) / "store")
    chosen = store.query("SELECT teacher FROM teacher_metrics WHERE chosen ORDER BY rank")
    first, again = metas
    assert first["objective"] == "on_policy" and first["trained_now"]
    assert first["on_policy_teacher"] == chosen["teacher"][0]
    queries = store.read_table("filtered_dataset")["query_id"].n_unique()
    # The metadata is the last round's: its samples came from round 1's checkpoint, new now.
    assert first["on_policy_round_1_generated_now"] == queries
    assert first["on_policy_round_1_samples"] + first["on_policy_round_1_empty_samples"] == queries
    assert first["topk_computed_now"] == first["on_policy_round_1_samples"]
    folders = {p.name for p in (Path(home) / "store" / "generations_onpolicy").iterdir()}
    assert len(folders) == 2  # one namespace per student model sampled: base, round 1
    assert again["on_policy_round_1_generated_now"] == 0 and again["topk_computed_now"] == 0
    assert not again["trained_now"] and again["path"] == first["path"]


def test_on_policy_crashed_in_round_two_resumes_without_redoing_round_one(
        tiny_run, tmp_path, monkeypatch):
    """A crash after round 2's student samples were stored, while the teacher grades them: the
    rerun reuses round 1's checkpoint and round 2's samples, and grades and trains only round 2."""
    import yaml

    from distill_dag.stages import distilled_checkpoint as stage
    from distill_dag.training.objectives import on_policy

    home = tiny_run[0]
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["training"].update(objective="on_policy", on_policy={  # seed 7: samples of its own
        "rounds": 2, "samples_per_query": 1, "max_new_tokens": 12, "top_k": 4, "seed": 7})
    edited = tmp_path / "on_policy_crash.yaml"
    edited.write_text(yaml.safe_dump(config))
    defs = build_definitions(edited, home=str(home), device="cpu", show_progress=False)
    grade, train = on_policy.teacher_topk_records, stage.train_student
    trained: list[bool] = []  # trained_now of each checkpoint, in order

    def crash_in_round_two(inputs, *args, **kwargs):
        if inputs.round == 1:
            raise RuntimeError("simulated crash while grading round 2")
        return grade(inputs, *args, **kwargs)

    def spy(records, *args, **kwargs):
        result = train(records, *args, **kwargs)
        trained.append(result.trained_now)
        return result

    monkeypatch.setattr(stage, "train_student", spy)
    monkeypatch.setattr(on_policy, "teacher_topk_records", crash_in_round_two)
    with dg.instance_for_test() as instance:
        with pytest.raises(Exception, match="simulated crash while grading round 2"):
            dg.materialize(list(defs.assets), selection=["distilled_checkpoint"],
                           instance=instance, resources=defs.resources)
        # Round 1 trained and saved before the crash; Dagster's retries of the step reused it.
        assert trained[0] and len(trained) >= 2 and not any(trained[1:])
        trained.clear()
        monkeypatch.setattr(on_policy, "teacher_topk_records", grade)
        result = dg.materialize(list(defs.assets), selection=["distilled_checkpoint"],
                                instance=instance, resources=defs.resources)
    meta = {k: v.value for k, v in
            result.get_asset_materialization_events()[0].materialization.metadata.items()}
    assert trained == [False, True]  # round 1 reused, round 2 trained now
    assert meta["trained_now"] and meta["on_policy_round_1_generated_now"] == 0
    assert meta["topk_computed_now"] == meta["on_policy_round_1_samples"] > 0
