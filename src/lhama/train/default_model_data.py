"""Templated tasks that teach the default model (SmolLM2-135M-Instruct) what the README shows.

Four families, each item a JSON-ready dict with the prompt ``messages``, a templated ``gold``
answer and what its check needs (``lhama.train.default_model_checks``):

- ``tool``: arithmetic and small string questions. The model should answer with a code-interpreter
  call in the exact text the agent parses (``<tool_call>`` JSON under SmolLM2's template), then,
  given the sandbox's output, state the result. Gold code is run in the sandbox when the item is
  made, so every expected answer comes from execution, not from this file.
- ``rag``: questions over generated documents, prompted exactly as ``lhama rag ask`` prompts
  (``lhama.rag.answer.grounded_messages``); the answer must state the fact and cite ``[n]``.
- ``brief``: short factual questions under a brevity system prompt; the answer must stop soon.
- ``phrase``: everyday phrases of the 8 Llama 3.1 languages.

``split="train"`` and ``split="heldout"`` use different templates, system prompts, word lists and
items (capitals, facts and phrase/language pairs are partitioned), and the caller gives each its
own seed: the held-out sets share nothing with the training data but the task.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from lhama.rag.answer import Source, grounded_messages

TOOL_NAME = "code_interpreter"


def tool_specs() -> list[dict]:
    """The code interpreter's spec exactly as ``lhama agent --tools code_interpreter`` sends it."""
    from lhama.tools.builtin import as_tool

    return [as_tool(TOOL_NAME).spec()]


def tool_call_text(code: str) -> str:
    """An assistant turn that is one call, as SmolLM2's template renders ``tool_calls``."""
    return "<tool_call>\n" + json.dumps({"name": TOOL_NAME, "arguments": {"code": code}}) + "\n</tool_call>"


# -- tool questions -----------------------------------------------------------------------------
# Each op: rng -> (template fields, code). Templates are per split; the code is shared.
WORDS = {
    "train": [
        "banana",
        "mississippi",
        "committee",
        "parallel",
        "bookkeeper",
        "assessment",
        "balloon",
        "letter",
        "coffee",
        "engineer",
        "pepper",
        "rhythm",
        "success",
        "tomorrow",
        "address",
        "cabbage",
        "llama",
        "hello",
        "puzzle",
        "kitten",
        "summer",
        "window",
        "yellow",
        "carrot",
        "butter",
        "pizza",
        "goose",
    ],
    "heldout": [
        "apple",
        "tennessee",
        "bubble",
        "possession",
        "referee",
        "illusion",
        "giraffe",
        "cucumber",
        "dinner",
        "strawberry",
    ],
}


def _pow(r):
    a, b = r.randint(2, 19), r.randint(10, 60)
    return {"a": a, "b": b}, f"print({a}**{b})"


def _mul(r):
    a, b = r.randint(1000, 99999), r.randint(100, 9999)
    return {"a": a, "b": b}, f"print({a} * {b})"


def _range_sum(r):
    n = r.randint(50, 5000)
    return {"n": n}, f"print(sum(range(1, {n} + 1)))"


def _factorial(r):
    n = r.randint(8, 30)
    return {"n": n}, f"import math\nprint(math.factorial({n}))"


def _mod(r):
    a, b = r.randint(10**5, 10**9), r.randint(7, 997)
    return {"a": a, "b": b}, f"print({a} % {b})"


def _digits(r):
    a, b = r.randint(2, 99), r.randint(20, 200)
    return {"a": a, "b": b}, f"print(len(str({a}**{b})))"


def _gcd(r):
    g = r.randint(2, 60)
    a, b = g * r.randint(10, 500), g * r.randint(10, 500)
    return {"a": a, "b": b}, f"import math\nprint(math.gcd({a}, {b}))"


def _primes(r):
    n = r.randint(30, 3000)
    return {"n": n}, (f"print(sum(1 for k in range(2, {n}) if all(k % d for d in range(2, int(k ** 0.5) + 1))))")


def _count(split):
    def op(r):
        w = r.choice(WORDS[split])
        c = r.choice(sorted(set(w)))
        return {"w": w, "c": c}, f"print({w!r}.count({c!r}))"

    return op


def _reverse(split):
    def op(r):
        w = r.choice(WORDS[split])
        return {"w": w}, f"print({w!r}[::-1])"

    return op


def _sqrt(r):
    n = r.randint(2, 99999)
    return {"n": n}, f"print(round({n} ** 0.5, 3))"


TOOL_TEMPLATES: dict[str, list[tuple[Callable, list[str]]]] = {
    "train": [
        (
            _pow,
            [
                "What is {a}**{b}?",
                "Compute {a} to the power of {b}.",
                "What is {a}^{b}?",
                "Evaluate {a}**{b}.",
                "What does {a} to the {b}th power equal?",
                "Take {a} to the {b}th power.",
                "Work out {a} to the {b}th power.",
                "Tell me {a}**{b}.",
            ],
        ),
        (
            _mul,
            [
                "What is {a} times {b}?",
                "Multiply {a} by {b}.",
                "What is {a} * {b}?",
                "Work out {a} x {b}.",
                "{a} * {b} = ?",
                "What is {a} multiplied by {b}?",
            ],
        ),
        (
            _range_sum,
            [
                "What is the sum of the integers from 1 to {n}?",
                "Add the numbers 1 through {n}.",
                "Sum every integer between 1 and {n}.",
                "Add up the integers 1 to {n}.",
                "Compute 1 + 2 + ... + {n}.",
            ],
        ),
        (
            _factorial,
            ["What is {n} factorial?", "Compute {n}!", "What is the value of {n}!?", "{n} factorial equals what?"],
        ),
        (
            _mod,
            [
                "What is the remainder when {a} is divided by {b}?",
                "What is {a} mod {b}?",
                "Compute {a} % {b}.",
                "Take {a} mod {b}.",
                "Divide {a} by {b}: what is the remainder?",
            ],
        ),
        (
            _digits,
            [
                "How many digits does {a}**{b} have?",
                "How long is {a}^{b} written out, in digits?",
                "How many digits are in {a}**{b}?",
                "Find the number of digits of {a}**{b}.",
            ],
        ),
        (
            _gcd,
            [
                "What is the greatest common divisor of {a} and {b}?",
                "What is gcd({a}, {b})?",
                "What is the largest number dividing both {a} and {b}?",
            ],
        ),
        (
            _primes,
            [
                "How many primes are there below {n}?",
                "How many prime numbers are smaller than {n}?",
                "How many primes lie below {n}?",
            ],
        ),
        (
            _count("train"),
            [
                "How many times does the letter '{c}' appear in '{w}'?",
                "How many '{c}'s are in '{w}'?",
                "Count the letter '{c}' in '{w}'.",
                "How many '{c}' letters does '{w}' have?",
            ],
        ),
        (
            _reverse("train"),
            [
                "What is '{w}' spelled backwards?",
                "Write '{w}' in reverse order.",
                "Turn '{w}' around, last letter first.",
                "Spell '{w}' backwards.",
            ],
        ),
        (
            _sqrt,
            [
                "What is the square root of {n}, rounded to 3 decimals?",
                "sqrt({n}) to 3 decimals?",
                "Square root of {n}, 3 decimals?",
            ],
        ),
    ],
    "heldout": [
        (_pow, ["Calculate {a} raised to the power {b}.", "Please work out {a} ** {b}."]),
        (_mul, ["What do you get when you multiply {a} and {b}?", "Find the product of {a} and {b}."]),
        (_range_sum, ["Find the total of all whole numbers from 1 up to {n}."]),
        (_factorial, ["Find the factorial of {n}."]),
        (_mod, ["What is {a} modulo {b}?"]),
        (_digits, ["Count the digits of {a} to the power {b}."]),
        (_gcd, ["Find the GCD of {a} and {b}."]),
        (_primes, ["Count the prime numbers less than {n}."]),
        (_count("heldout"), ["Count how often '{c}' occurs in the word '{w}'."]),
        (_reverse("heldout"), ["Reverse the string '{w}'."]),
        (_sqrt, ["Give the square root of {n} to 3 decimal places."]),
    ],
}
TOOL_ANSWER = "The answer is {x}."


def run_code(code: str) -> tuple[str, str]:
    """(what the gold program prints, the tool turn the agent sends back for it: the real sandbox
    output). A failing gold program is a bug in a template, so it raises."""
    from lhama.tools.builtin import format_sandbox_result
    from lhama.tools.sandbox import run_python

    res = run_python(code)
    if not res.ok:
        raise RuntimeError(f"gold code failed in the sandbox: {code!r}: {res.stderr[-300:]}")
    return res.stdout.strip(), format_sandbox_result(res)


def tool_items(split: str, n: int, seed: int) -> list[dict]:
    r = random.Random(seed)
    ops = TOOL_TEMPLATES[split]
    items = []
    for i in range(n):
        op, templates = ops[i % len(ops)]
        fields, code = op(r)
        question = r.choice(templates).format(**fields)
        expected, result = run_code(code)
        items.append(
            {
                "task": "tool",
                "question": question,
                "code": code,
                "expected": expected,
                "result": result,
                "answer": TOOL_ANSWER.format(x=expected),
            }
        )
    return items


def tool_records(item: dict) -> list[dict]:
    """Two training turns per question: the call, and the answer once the result is back."""
    call = tool_call_text(item["code"])
    first = [{"role": "user", "content": item["question"]}]
    second = first + [
        {"role": "assistant", "content": call},
        {"role": "tool", "name": TOOL_NAME, "content": item["result"]},
    ]
    return [
        {"task": "tool_call", "messages": first, "gold": call, "expected": item["expected"]},
        {"task": "tool_answer", "messages": second, "gold": item["answer"], "expected": item["expected"]},
    ]


# -- questions over generated documents ---------------------------------------------------------
SYLLABLES = [
    "var",
    "den",
    "ol",
    "mar",
    "ket",
    "sil",
    "bro",
    "tan",
    "el",
    "vin",
    "dor",
    "quen",
    "lo",
    "ra",
    "ber",
    "gis",
    "ton",
    "ham",
    "ul",
    "fen",
    "cal",
    "mir",
    "pa",
    "zo",
    "rek",
    "nis",
]
RIVERS = ["Aldor", "Brennet", "Corvin", "Dashel", "Elmira", "Fossa", "Gral", "Hessel"]
KINDS = {
    # kind: (file, sentence templates, questions per attribute: {attr: (question templates, answer)})
    "town": (
        "towns.md",
        (
            "{name} is a town on the {river} river. It was founded in {year} and has "
            "{pop} inhabitants. Its market is held every {day}."
        ),
        {
            "year": (
                ["When was {name} founded?"],
                ["In which year was {name} founded?"],
                "{name} was founded in {year}",
            ),
            "pop": (
                ["How many people live in {name}?"],
                ["What is the population of {name}?"],
                "{name} has {pop} inhabitants",
            ),
            "river": (
                ["Which river is {name} on?"],
                ["On what river does {name} lie?"],
                "{name} is on the {river} river",
            ),
            "day": (
                ["On which day is the market in {name}?"],
                ["When is market day in {name}?"],
                "The market in {name} is held every {day}",
            ),
        },
    ),
    "company": (
        "companies.md",
        (
            "{name} Ltd. makes {product}. The company was started in {year} and "
            "employs {staff} people. Its head office is in {city}."
        ),
        {
            "product": (
                ["What does {name} Ltd. make?"],
                ["What are the products of {name} Ltd.?"],
                "{name} Ltd. makes {product}",
            ),
            "year": (
                ["When was {name} Ltd. started?"],
                ["In what year did {name} Ltd. begin?"],
                "{name} Ltd. was started in {year}",
            ),
            "staff": (
                ["How many people work at {name} Ltd.?"],
                ["How many employees does {name} Ltd. have?"],
                "{name} Ltd. employs {staff} people",
            ),
            "city": (
                ["Where is the head office of {name} Ltd.?"],
                ["In which city is {name} Ltd. based?"],
                "Its head office is in {city}",
            ),
        },
    ),
}
PRODUCTS = ["bicycles", "glass bottles", "garden tools", "wool blankets", "paper lamps", "clocks", "kites"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _name(r) -> str:
    return "".join(r.choice(SYLLABLES) for _ in range(r.randint(2, 3))).capitalize()


def _fields(r) -> dict:
    return {
        "name": _name(r),
        "river": r.choice(RIVERS),
        "year": r.randint(1100, 1990),
        "pop": r.randint(800, 90000),
        "day": r.choice(DAYS),
        "product": r.choice(PRODUCTS),
        "staff": r.randint(12, 4000),
        "city": _name(r),
    }


def rag_items(split: str, n: int, seed: int) -> list[dict]:
    r = random.Random(seed)
    which = 0 if split == "train" else 1
    items = []
    for _ in range(n):
        docs = []
        for _ in range(r.randint(2, 4)):
            kind = r.choice(sorted(KINDS))
            docs.append((kind, _fields(r)))
        target = r.randrange(len(docs))
        kind, f = docs[target]
        attr = r.choice(sorted(KINDS[kind][2]))
        spec = KINDS[kind][2][attr]
        question = r.choice(spec[which]).format(**f)
        sources = [
            Source(i + 1, KINDS[k][0], f"{KINDS[k][0]} § {d['name']}", KINDS[k][1].format(**d), 1.0)
            for i, (k, d) in enumerate(docs)
        ]
        answer = spec[2].format(**f) + f" [{target + 1}]."
        items.append(
            {
                "task": "rag",
                "messages": grounded_messages(question, sources),
                "gold": answer,
                "expected": str(f[attr]),
                "source": target + 1,
                "n_sources": len(sources),
            }
        )
    return items


# -- brief answers ------------------------------------------------------------------------------
SYSTEMS = {
    "train": ["Be brief.", "Keep your answers short.", "Answer in a few words.", "Reply concisely."],
    "heldout": ["Answer briefly.", "Short answers only, please.", "Be concise."],
}
CAPITALS = [
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"),
    ("Egypt", "Cairo"),
    ("Norway", "Oslo"),
    ("Greece", "Athens"),
    ("Austria", "Vienna"),
    ("Ireland", "Dublin"),
    ("Russia", "Moscow"),
    ("Poland", "Warsaw"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Cuba", "Havana"),
    ("Thailand", "Bangkok"),
    ("China", "Beijing"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("France", "Paris"),
    ("India", "New Delhi"),
    ("England", "London"),
    ("Canada", "Ottawa"),
    ("Belgium", "Brussels"),
    ("Hungary", "Budapest"),
    ("Turkey", "Ankara"),
    ("Chile", "Santiago"),
]
FACTS = [  # (question, answer, the answer as one short sentence: SmolLM2's own answer shape)
    ("How many days are in a week?", "7", "There are 7 days in a week."),
    ("How many legs does a spider have?", "8", "A spider has 8 legs."),
    ("What color is the sky on a clear day?", "blue", "The sky is blue on a clear day."),
    ("What do bees make?", "honey", "Bees make honey."),
    (
        "What is the largest planet in the solar system?",
        "Jupiter",
        "Jupiter is the largest planet in the solar system.",
    ),
    ("What is the opposite of hot?", "cold", "The opposite of hot is cold."),
    ("At what temperature in Celsius does water boil?", "100", "Water boils at 100 degrees Celsius."),
    ("How many months are in a year?", "12", "There are 12 months in a year."),
    ("What gas do plants take in from the air?", "carbon dioxide", "Plants take in carbon dioxide from the air."),
    ("Which animal says moo?", "cow", "The cow says moo."),
    ("How many hours are in a day?", "24", "There are 24 hours in a day."),
    ("What is frozen water called?", "ice", "Frozen water is called ice."),
    ("How many sides does a triangle have?", "3", "A triangle has 3 sides."),
    ("What is the closest star to Earth?", "the Sun", "The closest star to Earth is the Sun."),
    ("How many minutes are in an hour?", "60", "There are 60 minutes in an hour."),
    ("What color are bananas when ripe?", "yellow", "Ripe bananas are yellow."),
    ("Which planet is known as the red planet?", "Mars", "Mars is known as the red planet."),
    ("How many continents are there?", "7", "There are 7 continents."),
    ("What is the opposite of up?", "down", "The opposite of up is down."),
    ("How many wheels does a bicycle have?", "2", "A bicycle has 2 wheels."),
]


def _split(items: list, split: str, heldout_every: int = 4) -> list:
    """Every ``heldout_every``-th item is held out; the rest train."""
    return [x for i, x in enumerate(items) if (i % heldout_every == heldout_every - 1) == (split == "heldout")]


def brief_items(split: str, n: int, seed: int) -> list[dict]:
    r = random.Random(seed)
    caps = [(f"What is the capital of {c}?", a, f"The capital of {c} is {a}.") for c, a in _split(CAPITALS, split)]
    pool = caps + _split(FACTS, split)
    items = []
    for _ in range(n):
        q, a, sentence = r.choice(pool)
        # Training answers are one short sentence that restates the question ("The capital of
        # Chile is Santiago."), the shape the base model answers in when it knows the fact: a bare
        # "Santiago." taught it to drop the subject, and with it what it knew (held-out brief
        # facts 11/20 -> 7/20). The held-out files keep their bare gold (never trained on).
        gold = sentence if split == "train" else a[0].upper() + a[1:] + "."
        items.append(
            {
                "task": "brief",
                "messages": [{"role": "system", "content": r.choice(SYSTEMS[split])}, {"role": "user", "content": q}],
                "gold": gold,
                "expected": a,
            }
        )
    return items


# -- everyday phrases in the 8 languages --------------------------------------------------------
LANGS = ["German", "French", "Italian", "Portuguese", "Hindi", "Spanish", "Thai"]
PHRASES = {  # English -> the other seven languages, in LANGS order
    "hello": ["Hallo", "Bonjour", "Ciao", "Olá", "नमस्ते", "Hola", "สวัสดี"],
    "thank you": ["Danke", "Merci", "Grazie", "Obrigado", "धन्यवाद", "Gracias", "ขอบคุณ"],
    "good morning": ["Guten Morgen", "Bonjour", "Buongiorno", "Bom dia", "सुप्रभात", "Buenos días", "อรุณสวัสดิ์"],
    "good night": ["Gute Nacht", "Bonne nuit", "Buona notte", "Boa noite", "शुभ रात्रि", "Buenas noches", "ราตรีสวัสดิ์"],
    "goodbye": ["Auf Wiedersehen", "Au revoir", "Arrivederci", "Adeus", "अलविदा", "Adiós", "ลาก่อน"],
    "yes": ["Ja", "Oui", "Sì", "Sim", "हाँ", "Sí", "ใช่"],
    "please": ["Bitte", "S'il vous plaît", "Per favore", "Por favor", "कृपया", "Por favor", "กรุณา"],
    "water": ["Wasser", "Eau", "Acqua", "Água", "पानी", "Agua", "น้ำ"],
    "friend": ["Freund", "Ami", "Amico", "Amigo", "दोस्त", "Amigo", "เพื่อน"],
    "cat": ["Katze", "Chat", "Gatto", "Gato", "बिल्ली", "Gato", "แมว"],
}
PHRASE_TEMPLATES = {
    "train": ["How do you say '{p}' in {lang}?", "What is the {lang} word for '{p}'?"],
    "heldout": ["Translate '{p}' into {lang}.", "'{p}' in {lang}, please?"],
}


def phrase_items(split: str, n: int, seed: int) -> list[dict]:
    r = random.Random(seed)
    pairs = [(p, lang, tr[j]) for p, tr in PHRASES.items() for j, lang in enumerate(LANGS)]
    pool = _split(pairs, split, heldout_every=5)
    items = []
    for _ in range(n):
        p, lang, t = r.choice(pool)
        q = r.choice(PHRASE_TEMPLATES[split]).format(p=p, lang=lang)
        items.append(
            {
                "task": "phrase",
                "messages": [{"role": "user", "content": q}],
                "gold": f"In {lang}, '{p}' is \"{t}\".",
                "expected": t,
            }
        )
    return items


# -- the base model's own text (self-distillation against forgetting) ---------------------------
# Openings of ordinary prose in the 8 languages, written for this file on other topics than the
# shipped ppl-* texts (a market, a bicycle, autumn): the base model continues each one (raw text,
# no chat template) and SFT also trains on those continuations, which pulls the adapter back
# towards the base's own distribution on plain text (the held-out bits per byte).
TEXT_OPENINGS = {
    "en": [
        "The harbour was quiet in the early evening.",
        "My grandmother kept a small kitchen garden behind the house.",
    ],
    "de": [
        "Der Hafen war am frühen Abend ganz still.",
        "Meine Großmutter hatte hinter dem Haus einen kleinen Gemüsegarten.",
    ],
    "es": ["El puerto estaba tranquilo al caer la tarde.", "Mi abuela tenía un pequeño huerto detrás de la casa."],
    "fr": ["Le port était calme en début de soirée.", "Ma grand-mère avait un petit potager derrière la maison."],
    "it": ["Il porto era tranquillo nel primo pomeriggio.", "Mia nonna aveva un piccolo orto dietro la casa."],
    "pt": ["O porto estava calmo ao fim da tarde.", "A minha avó tinha uma pequena horta atrás da casa."],
    "hi": ["शाम के समय बंदरगाह बिल्कुल शांत था।", "मेरी दादी के घर के पीछे एक छोटा सा बगीचा था।"],
    "th": ["ท่าเรือเงียบสงบในตอนเย็น", "คุณยายของฉันมีสวนผักเล็ก ๆ อยู่หลังบ้าน"],
}


def base_text(lm, per_opening: int, max_tokens: int, seed: int, temperature: float = 1.0) -> list[dict]:
    """``per_opening`` continuations of every ``TEXT_OPENINGS`` line by ``lm`` (raw text, sampled
    at ``temperature``), each as ``{"text": opening + continuation, "lang": ...}``."""
    from lhama.engine import LLMEngine
    from lhama.generate import SamplingParams

    engine = LLMEngine.from_loaded(lm)
    tok = lm.tokenizer
    openings = [(lang, t) for lang, texts in TEXT_OPENINGS.items() for t in texts]
    ids = [tok.encode(t, bos=tok.bos_id is not None, eos=False) for _, t in openings]
    params = [
        SamplingParams(temperature=temperature, max_tokens=max_tokens, n=per_opening, seed=seed * 1_000_003 + i)
        for i in range(len(openings))
    ]
    out = []
    for (lang, opening), res in zip(openings, engine.generate(ids, params)):
        for comp in res.completions:
            out.append({"text": opening + comp.text, "lang": lang})
    return out


def build_records(split: str, sizes: dict[str, int], seed: int) -> list[dict]:
    """Every record of a split: prompt ``messages`` (tool prompts carry ``tools``), ``gold``,
    and what the check reads. Deterministic in (split, sizes, seed)."""
    records: list[dict] = []
    for item in tool_items(split, sizes.get("tool", 0), seed):
        for rec in tool_records(item):
            records.append({**rec, "tools": tool_specs(), "question": item["question"], "code": item["code"]})
    records += rag_items(split, sizes.get("rag", 0), seed + 1)
    records += brief_items(split, sizes.get("brief", 0), seed + 2)
    records += phrase_items(split, sizes.get("phrase", 0), seed + 3)
    return records


__all__ = [
    "TEXT_OPENINGS",
    "TOOL_NAME",
    "base_text",
    "brief_items",
    "build_records",
    "phrase_items",
    "rag_items",
    "run_code",
    "tool_call_text",
    "tool_items",
    "tool_records",
    "tool_specs",
]
