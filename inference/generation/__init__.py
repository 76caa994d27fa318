"""LLM studies (`infer-corpus generate`): prompt sets, or a template over a corpus's
passages, through a grid of models, with every output's provenance, checkpoints, labels and a
report of label rates.

- `config`: the `generation` config section (models, sampling, labels);
- `prompts`: reading and sharding prompt sets, and templates over passages;
- `manifest`: the generation manifest, typed (`GenerationManifest`);
- `generate`: the keys, the per-model shard worker and the local runner;
- `refusals`: the refusal rules that label replies;
- `report`: label rates per model and prompt group (table, CSV, Markdown, PNG).

The models themselves run through `inference.llm_backends`.
"""
