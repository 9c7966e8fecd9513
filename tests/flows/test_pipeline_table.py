"""The pipeline table (flows/pipeline.py PIPELINE) is the one place that orders and wires the stages."""

import inspect

from prefect import Flow

from flows.pipeline import PIPELINE, REPORTS, STAGE_ORDER, PipelineConfig, Stage, select_stages, upstream_of


def test_rows_in_order_with_uniform_flows_and_reports():
    assert STAGE_ORDER == [
        "ingest",
        "langid",
        "quality",
        "clean",
        "dedup",
        "decontaminate",
        "mix",
        "tokenize",
        "train",
        "eval",
    ]
    assert [str(s) for s in Stage] == STAGE_ORDER
    for i, row in enumerate(PIPELINE):
        assert isinstance(row.flow, Flow), row.stage
        sig = inspect.signature(row.flow.fn)
        assert {"params", "data_root", "force"} <= set(sig.parameters), row.stage
        # every stage after the first reads the one before it, chosen by input_version
        assert ("input_version" in sig.parameters) == (i > 0), row.stage
        assert upstream_of(row.stage) == (PIPELINE[i - 1].stage if i else None)
        assert row.stage in PipelineConfig.model_fields, f"config section {row.stage} missing"
        assert REPORTS[row.stage] is row.report and callable(row.report)
        for extra in row.config_extra:
            assert extra in PipelineConfig.model_fields and extra in sig.parameters
    assert "quality_classifier" in REPORTS  # side artifacts with a report come from their stage's row


def test_selection_follows_the_table():
    assert select_stages(from_stage="dedup", to_stage="mix") == ["dedup", "decontaminate", "mix"]
    assert select_stages(from_stage="quality", to_stage="dedup") == ["quality", "clean", "dedup"]
    assert upstream_of("clean") == "quality" and upstream_of("dedup") == "clean"
    assert select_stages(only="train") == ["train"]
