"""Chat templates rendered like transformers' apply_chat_template: SmolLM2's own template from its
GGUF, and a template that exercises every feature (tools, tojson, strftime_now, namespace, loop
controls, generation blocks, raise_exception), all compared with transformers on the same input."""

from __future__ import annotations

import json

import pytest

from lhama.errors import ChatFormatError
from lhama.tokenizer import JinjaChatFormat, load_chat_format

DIALOGS = [
    [{"role": "user", "content": "Hi!"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "Et en français ? 🦙 日本語 नमस्ते"},
    ],
    [
        {"role": "user", "content": "Write code"},
        {"role": "assistant", "content": "def f():\n    return 'x'\n"},
        {"role": "user", "content": "  spaces  \n\n and <|im_end|> inside text "},
    ],
]

FEATURES = """{%- set ns = namespace(turns=0) -%}
{{ bos_token }}{% if tools %}<tools>{{ tools | tojson(indent=2) }}</tools>
{% endif %}
{%- for m in messages %}
  {%- if m['role'] == 'system' and not loop.first %}{{ raise_exception('system must come first') }}{% endif %}
  {%- if m['role'] == 'skip' %}{% continue %}{% endif %}
  {%- set ns.turns = ns.turns + 1 %}
  <|im_start|>{{ m['role'] }}
  {%- if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}
  {%- else %}{{ m['content'] | trim }}{% endif %}
  {%- if m.tool_calls %}{{ m.tool_calls | tojson }}{% endif %}<|im_end|>
  {%- if m['role'] == 'stop' %}{% break %}{% endif %}
{% endfor %}
turns={{ ns.turns }} year={{ strftime_now('%Y') }} {{ {'ü': 'é', 'b': [1, 2]} | tojson }}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}{{ eos_token }}"""


@pytest.fixture(scope="module")
def smol_format(smollm2_path, smol):
    return load_chat_format(smollm2_path, smol)


def test_smollm2_template_renders_like_transformers(smol_format, smol, hf_smol):
    assert isinstance(smol_format, JinjaChatFormat)
    for dialog in DIALOGS:
        for gen in (True, False):
            want = hf_smol.apply_chat_template(dialog, tokenize=False, add_generation_prompt=gen)
            assert smol_format.render(dialog, add_generation_prompt=gen) == want
            ids = hf_smol.apply_chat_template(dialog, tokenize=True, add_generation_prompt=gen)["input_ids"]
            if any("<|im_end|>" in m["content"] for m in dialog):
                # transformers parses special-token text inside messages; we keep it text
                # (test_message_text_is_literal.py checks those ids against transformers).
                assert smol_format.encode_dialog(dialog, add_generation_prompt=gen) != ids
            else:
                assert smol_format.encode_dialog(dialog, add_generation_prompt=gen) == ids


def test_smollm2_stops_and_replies(smol_format, smol):
    assert smol.special_tokens["<|im_end|>"] in smol_format.stop_ids
    m = smol_format.decode_assistant(smol.encode("Paris.<|im_end|>", allow_special=True))
    assert m == {"role": "assistant", "content": "Paris.", "stop_reason": "end_of_turn"}
    m = smol_format.decode_assistant(
        smol.encode(
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call><|im_end|>',
            allow_special=True,
        )
    )
    assert [c["function"]["name"] for c in m["tool_calls"]] == ["get_weather", "get_time"]
    assert json.loads(m["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"} and m["content"] is None
    assert smol_format.decode_assistant(smol.encode("no stop"))["stop_reason"] == "out_of_tokens"


def test_template_features_render_like_transformers(smol, hf_smol):
    fmt = JinjaChatFormat(FEATURES, smol)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Météo",
                "parameters": {"type": "object", "properties": {"city": {}}},
            },
        }
    ]
    dialog = [
        {"role": "system", "content": "  sys  "},
        {"role": "skip", "content": "hidden"},
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Pa"}}}],
        },
        {"role": "stop", "content": "end"},
        {"role": "user", "content": "never shown"},
    ]
    for kwargs in ({"tools": tools}, {}):
        for gen in (True, False):
            want = hf_smol.apply_chat_template(
                dialog, chat_template=FEATURES, tokenize=False, add_generation_prompt=gen, **kwargs
            )
            assert fmt.render(dialog, add_generation_prompt=gen, **kwargs) == want
    assert "never shown" not in want and "hidden" not in want


def test_template_errors_are_chat_format_errors(smol):
    fmt = JinjaChatFormat(FEATURES, smol)
    with pytest.raises(ChatFormatError, match="system must come first"):
        fmt.render([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])
    with pytest.raises(ChatFormatError, match="does not compile"):
        JinjaChatFormat("{% for %}", smol)
    with pytest.raises(ChatFormatError, match="role"):
        fmt.render([{"content": "no role"}])


@pytest.mark.parametrize(
    "attack",
    [
        "{{ messages.__class__.__mro__ }}",
        "{{ ''.__class__.__subclasses__() }}",
        "{{ raise_exception.__globals__ }}",
        "{% set x = messages.append(1) %}",
        "{{ cycler.__init__.__globals__.os }}",
    ],
)
def test_templates_are_sandboxed(smol, attack):
    """Unsafe attributes are refused (an error) or read as undefined (nothing rendered)."""
    try:
        out = JinjaChatFormat(attack, smol).render([{"role": "user", "content": "x"}])
    except ChatFormatError:
        return
    assert out == ""


def test_stop_ids_include_the_templates_end_of_turn_token(smol):
    fmt = JinjaChatFormat("{% for m in messages %}{{ m['content'] }}<|endoftext|>{% endfor %}", smol)
    assert smol.special_tokens["<|endoftext|>"] in fmt.stop_ids and smol.eos_id in fmt.stop_ids


def test_a_template_compiled_on_first_use_reports_its_error_there(smol):
    fmt = JinjaChatFormat("{% for %}", smol, compile_now=False)  # the loader's way: nothing compiled yet
    with pytest.raises(ChatFormatError, match="does not compile"):
        fmt.render([{"role": "user", "content": "a"}])
