"""Generation flow: print the prompt and a sampled continuation from a checkpoint."""
from __future__ import annotations

from prefect import flow

from flows import forms
from flows.common import checkpoint_path, command, flow_config
from tasks.lm.generate import generate_task


@forms.run_form
@flow(name="generate")
def generate_flow(prompt: forms.Prompt = forms.preset("prompt"), model: forms.Model = forms.pick("model"),
                  checkpoint: forms.Checkpoint = None,
                  max_new_tokens: forms.MaxNewTokens = forms.preset("max_new_tokens"),
                  temperature: forms.Temperature = forms.preset("temperature"),
                  top_k: forms.TopK = forms.preset("top_k"), top_p: forms.TopP = forms.preset("top_p"),
                  num_samples: forms.NumSamples = forms.preset("num_samples"),
                  overrides: list[str] = ()) -> list[str]:
    """Continuations of `prompt` from `checkpoint` (default: the last of the run), streamed."""
    cfg = flow_config(generate_flow.fn, locals())
    return generate_task(checkpoint_path(cfg), cfg)


main = command(generate_flow, checkpoint_path)


if __name__ == "__main__":
    main()
