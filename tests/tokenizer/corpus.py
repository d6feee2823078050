"""Offline multilingual test text: the 8 Llama 3.1 languages from Faker's locales, plus code,
numbers, URLs, emoji and whitespace runs. Faker's pt_BR and hi_IN "lorem" is Latin, so for
Portuguese and Hindi sentences are built from the locale's own names/places/jobs mixed with a
short list of common words."""

from __future__ import annotations

import random

LOCALES = ["en_US", "de_DE", "fr_FR", "it_IT", "pt_BR", "hi_IN", "es_ES", "th_TH"]  # Llama 3.1's languages

HINDI_WORDS = (
    "और है के में की को से यह एक पर भारत सरकार लोग समय काम दिन साल शहर पानी किताब विद्यालय बच्चे परिवार "
    "खाना बाज़ार नदी पहाड़ सुंदर बड़ा छोटा नया पुराना अच्छा करना जाना आना देखना लिखना पढ़ना बोलना सुनना मित्र "
    "प्रश्न उत्तर विज्ञान इतिहास संगीत त्योहार गाँव सड़क रेलगाड़ी डॉक्टर अस्पताल क्योंकि लेकिन फिर हमेशा कभी "
    "आज कल ज़्यादा कृपया धन्यवाद स्वागत ज्ञान क्षेत्र श्रीमान प्रधानमंत्री हिंदी भाषा देश दुनिया सूरज चाँद"
).split()
PORTUGUESE_WORDS = (
    "que não uma para com ação informação coração você também então é está cidade trabalho família amanhã "
    "pão mãe irmão órgão útil país língua português conversação obrigado saúde educação ônibus avó café "
    "açúcar história música médico rápido através já nós eles fazer dizer ver dar porque quando muito bem "
    "onde ainda sempre João São Conceição maçã lição razão"
).split()

CODE = [
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
    '<div class="x">&nbsp;Hello&amp;bye</div>',
    "    if x:\r\n        y = x ** 2  # squared\r\n",
    'fn main() { println!("{}", 1_000_000u64); }',
]
SYMBOLS = [
    "🎉",
    "🦙",
    "👩‍👩‍👧",
    "🇫🇷",
    "✓",
    "∑",
    "∫",
    "—",
    "“quotes”",
    "«guillemets»",
    "½",
    "€",
    "₹",
    "฿",
    "日本語",
    "中文文本",
    "한국어",
    "Привет",
    "مرحبا",
    "שלום",
    "ﬁ",
    "Å",
    "é",
    "\u00a0",
    "\u3000",
    "\u200b",
    "<|eot_id|>",
    "<|im_start|>",
    "</s>",
    "<s>",
    "[INST]",
]
SPACES = [" ", "  ", "\t", "\n", "\n\n", "\r\n", "   \n", " \t ", "\u00a0", "\u3000"]


def _whitespace_run(rnd: random.Random) -> str:
    return "".join(rnd.choice(SPACES) for _ in range(rnd.randint(1, 40)))


def _numbers(rnd: random.Random) -> str:
    return rnd.choice(
        [
            str(rnd.randint(0, 10 ** rnd.randint(1, 15))),
            f"{rnd.uniform(-1e6, 1e6):.{rnd.randint(0, 8)}f}",
            f"{rnd.randint(1, 9999):,}",
            f"0x{rnd.getrandbits(32):08X}",
            f"{rnd.random():.3e}",
            f"{rnd.randint(1, 31)}/{rnd.randint(1, 12)}/{rnd.randint(1900, 2100)}",
        ]
    )


def _sentences(f, rnd: random.Random, words: list[str], end: str) -> str:
    out = []
    for _ in range(rnd.randint(3, 8)):
        s = f.sentence(nb_words=rnd.randint(4, 14), ext_word_list=words)
        out.append(s[:-1] + end if end != "." else s)
    return " ".join(out)


def make_fakers(seed: int):
    import faker

    fakers = {}
    for i, loc in enumerate(LOCALES):
        f = faker.Faker(loc)
        f.seed_instance(seed + i)
        fakers[loc] = f
    return fakers


def _locale_words(f, loc: str, rnd: random.Random) -> list[str] | None:
    if loc == "hi_IN":
        extra = " ".join(f.name() + " " + f.city() for _ in range(10)).split()
        return HINDI_WORDS + extra
    if loc == "pt_BR":
        extra = " ".join(f.job() + " " + f.city() + " " + f.street_name() for _ in range(6)).split()
        return PORTUGUESE_WORDS + extra
    return None


def document(f, loc: str, rnd: random.Random) -> str:
    words = _locale_words(f, loc, rnd)
    text = _sentences(f, rnd, words, "।" if loc == "hi_IN" else ".") if words else f.text(rnd.randint(200, 900))
    parts = [
        text,
        f.name(),
        f.address(),
        f.city(),
        f.email(),
        f.url(),
        f.phone_number(),
        _numbers(rnd),
        rnd.choice(CODE),
        rnd.choice(SYMBOLS) * rnd.randint(1, 3),
        f.emoji(),
    ]
    if words is not None:
        parts.append(_sentences(f, rnd, words, "?"))
    rnd.shuffle(parts)
    glue = [rnd.choice(["\n", " ", "\n\n", "\t", ", ", _whitespace_run(rnd)]) for _ in parts]
    return "".join(p + g for p, g in zip(parts, glue))


def multilingual_corpus(min_bytes: int = 1_100_000, seed: int = 0) -> list[str]:
    """Documents, round-robin over the locales, until ``min_bytes`` of UTF-8."""
    rnd = random.Random(seed)
    fakers = make_fakers(seed)
    docs, size = [], 0
    while size < min_bytes:
        for loc, f in fakers.items():
            doc = document(f, loc, rnd)
            docs.append(doc)
            size += len(doc.encode())
    return docs
