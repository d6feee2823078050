"""Vocabularies embedded in GGUF files: SmolLM2's byte-level BPE against llama.cpp and HF, and a
SentencePiece vocabulary written into a GGUF against SentencePiece itself."""

from __future__ import annotations

import random

import pytest

from lhama.tokenizer import IncrementalDecoder, JinjaChatFormat, load_chat_format, load_tokenizer

TEXTS = [
    "Hello world! 12345 times 3.14", "def f(x):\n    return x**2  # ok\n\n\n", "日本語のテキスト 🎉🎉 emoji 👩‍👩‍👧",
    "  many   spaces\n\n\ttab", "Grüße, ça va? ¿Qué tal? नमस्ते สวัสดี Привет", "<|im_start|>user\nhi<|im_end|>",
    "I'm sure they'll've done it—it's 'quoted'", "x" * 300, "   leading and trailing   ",
]


@pytest.fixture(scope="module")
def smol(smollm2_path):
    return load_tokenizer(smollm2_path)


def test_smollm2_matches_llama_cpp(smol, smollm2_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (bench extra) is the reference here")
    ll = llama_cpp.Llama(model_path=str(smollm2_path), vocab_only=True, verbose=False)
    for s in TEXTS:
        assert smol.encode(s, allow_special=True) == ll.tokenize(s.encode(), add_bos=False, special=True), s
        assert smol.encode(s) == ll.tokenize(s.encode(), add_bos=False, special=False), s


def test_smollm2_matches_transformers_and_round_trips(smol, smollm2_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)
    for s in TEXTS:
        ids = smol.encode(s, allow_special=True)
        assert smol.decode(ids) == s
        assert hf.decode(ids) == s
    assert smol.vocab_size == 49152 and smol.eos_id == 2
    assert smol.special_tokens["<|im_end|>"] in smol.stop_ids


def test_smollm2_chat_template_matches_hf_apply_chat_template(smol, smollm2_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)
    fmt = load_chat_format(smollm2_path, smol)
    assert isinstance(fmt, JinjaChatFormat)
    dialogs = [
        [{"role": "user", "content": "Hi!"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4"}, {"role": "user", "content": "Et en français ? 🦙"}],
    ]
    for d in dialogs:
        for gen in (True, False):
            want = hf.apply_chat_template(d, tokenize=False, add_generation_prompt=gen)
            assert fmt.render(d, add_generation_prompt=gen) == want
            assert fmt.encode_dialog(d, add_generation_prompt=gen) == smol.encode(want, allow_special=True)
    m = fmt.decode_assistant(smol.encode("Paris.<|im_end|>", allow_special=True))
    assert m["content"] == "Paris." and m["stop_reason"] == "end_of_turn"


def test_smollm2_incremental_decoding(smol):
    rnd = random.Random(0)
    for s in TEXTS * 3:
        ids = smol.encode(s)
        dec = IncrementalDecoder(smol)
        deltas = [dec.push(i) for i in ids] + [dec.flush()]
        assert "".join(deltas) == s and not any("\ufffd" in d for d in deltas)
    del rnd


def _train_spm(tmp_path, text):
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    prefix = tmp_path / "spm"
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), vocab_size=1200, model_type="bpe",
                                   byte_fallback=True, character_coverage=0.99, bos_id=1, eos_id=2, unk_id=0,
                                   add_dummy_prefix=True, remove_extra_whitespaces=False, minloglevel=2,
                                   normalization_rule_name="identity", split_digits=True)  # as Llama 2
    return prefix.with_suffix(".model")


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    from tests.tokenizer.test_llama3_tokenizer import multilingual_corpus

    tmp = tmp_path_factory.mktemp("spm")
    return _train_spm(tmp, "\n".join(multilingual_corpus(min_bytes=60_000)))


def _gguf_from_spm(model_path, out):
    import gguf
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.IdToPiece(i) for i in range(sp.GetPieceSize())])
    w.add_token_scores([sp.GetScore(i) for i in range(sp.GetPieceSize())])
    types = []
    for i in range(sp.GetPieceSize()):
        types.append(2 if sp.IsUnknown(i) else 3 if sp.IsControl(i) else 6 if sp.IsByte(i) else 1)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def test_sentencepiece_vocab_in_gguf_matches_sentencepiece(spm_model, tmp_path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    ours_file = load_tokenizer(spm_model)
    ours_gguf = load_tokenizer(_gguf_from_spm(spm_model, tmp_path / "v.gguf"))
    for s in TEXTS + ["ünïcödé ஆ 🦙 rare chars use byte fallback"]:
        want = sp.EncodeAsIds(s)
        assert ours_file.encode(s) == want
        assert ours_gguf.encode(s) == want
        assert ours_gguf.decode(want) == sp.DecodeIds(want)
        dec = IncrementalDecoder(ours_gguf)
        deltas = [dec.push(i) for i in want] + [dec.flush()]
        assert "".join(deltas) == sp.DecodeIds(want)
        assert not any("\ufffd" in d for d in deltas)
    assert ours_gguf.bos_id == 1 and ours_gguf.eos_id == 2
    assert ours_gguf.encode("hi", bos=True, eos=True)[::len(ours_gguf.encode("hi")) + 1] == [1, 2]
