"""The whole pipeline: corpus -> train -> evaluate -> sample, then a short summary."""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import check_benchmarks, command, flow_config, run_form_args
from flows.forms import PipelineForm
from flows.corpus import check_inputs, corpus_flow
from flows.evaluate import evaluate_flow
from flows.generate import generate_flow
from flows.train import train_flow
from tasks.corpus.report import funnel


def summary(corpus: dict[str, Any], pipeline: list[dict[str, Any]], metrics: dict[str, float], texts: list[str]) -> str:
    """What a demo run shows at the end: the funnel, the val perplexity and the sample."""
    lines = ["", "=" * 72, "Corpus funnel:"]
    lines += [f"  {stage:<14} {count:>10,}" for stage, count in funnel(corpus["stats"], pipeline)]
    val = metrics["val"]
    lines += [f"Val perplexity: {val['eval/perplexity_strided']:.2f} (over {val['eval/tokens']:,.0f} tokens)",
              "Sample:", *texts, "=" * 72]
    return "\n".join(lines)


@flow(name="pipeline", log_prints=True)
@run_form_args
def pipeline_flow(cfg: dict[str, Any] | None = None, overrides: list[str] | None = None,
                  settings: PipelineForm | None = None) -> dict[str, Any]:
    """Build the corpus, train on it, evaluate the checkpoint and sample from it."""
    cfg = flow_config(cfg, overrides, settings)
    corpus = corpus_flow(cfg)
    trained = train_flow(cfg)
    metrics = evaluate_flow(cfg)
    return {"corpus": corpus, "train": trained, "eval": metrics, "samples": generate_flow(cfg)}


def check(cfg: dict[str, Any]) -> None:
    """The corpus's inputs and the benchmarks evaluation will look for."""
    check_inputs(cfg)
    check_benchmarks(cfg["eval"]["benchmarks_dir"], cfg["eval"]["benchmarks"], "eval.benchmarks_dir")


def run(cfg: dict[str, Any]) -> None:
    result = pipeline_flow(cfg)
    print(summary(result["corpus"], cfg["corpus"]["pipeline"], result["eval"], result["samples"]))


main = command(run, check)


if __name__ == "__main__":
    main()
