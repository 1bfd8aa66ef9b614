"""Numbers, times and dates as spoken words: what tools read from call values and say in results.

Call values are copied from transcripts (``seven thirty pm``, ``the third of march``), so tools
parse spoken forms (digits too) into machine values for the state (``19:30``, ``2026-03-03``)
and say machine values back in words. Everything is deterministic: "now" comes from the
environment's clock, never from the system clock.
"""
from __future__ import annotations

import datetime as dt
import re

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
ORD_ONES = ("zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
            "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth").split()
ORD_TENS = {"twentieth": 20, "thirtieth": 30}
WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
MONTHS = "january february march april may june july august september october november december".split()
SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}


def number_to_words(n: int) -> str:
    """``123`` -> ``one hundred twenty three`` (negative: ``minus ...``)."""
    n = int(n)
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    for word, size in (("million", 1_000_000), ("thousand", 1000), ("hundred", 100)):
        if n >= size:
            head, rest = divmod(n, size)
            return number_to_words(head) + " " + word + ("" if rest == 0 else " " + number_to_words(rest))
    raise AssertionError(n)


def decimal_to_words(x: float, places: int = 2) -> str:
    """``1.18`` -> ``one point one eight``; whole numbers without a point."""
    text = f"{x:.{places}f}".rstrip("0").rstrip(".")
    whole, _, frac = text.partition(".")
    words = number_to_words(int(whole))
    return words + (" point " + " ".join(ONES[int(d)] for d in frac) if frac else "")


def ordinal_words(n: int) -> str:
    """``21`` -> ``twenty first``."""
    if n < 20:
        return ORD_ONES[n]
    tens, ones = divmod(n, 10)
    if ones == 0:
        return TENS[tens][:-1] + "ieth"
    return TENS[tens] + " " + ORD_ONES[ones]


_WORD_VALUES = {w: i for i, w in enumerate(ONES)} | {w: 10 * i for i, w in enumerate(TENS) if i >= 2}
_WORD_VALUES |= {"a": 1, "an": 1, "oh": 0, "o": 0, "dozen": 12}
_ORDINALS = {w: i for i, w in enumerate(ORD_ONES)} | ORD_TENS


def words_to_number(text: str) -> float:
    """``twenty three`` / ``23`` / ``three point five`` / ``one hundred and five`` -> number;
    ValueError when the words are not a number."""
    text = text.lower().replace("-", " ").replace(",", "").strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return float(text) if "." in text else int(text)
    words = [w for w in text.split() if w != "and"]
    if not words:
        raise ValueError("no number")
    sign = -1 if words[0] in ("minus", "negative") else 1
    words = words[1:] if sign < 0 else words
    if "point" in words:
        i = words.index("point")
        digits = words[i + 1:]
        if not digits or any(d not in ONES[:10] and d != "oh" for d in digits):
            raise ValueError(f"not a number: {text!r}")
        frac = float("0." + "".join(str(_WORD_VALUES[d]) for d in digits))
        return sign * (words_to_number(" ".join(words[:i])) + frac if words[:i] else frac)
    total, current = 0, 0
    for w in words:
        if w in _WORD_VALUES:
            current += _WORD_VALUES[w]
        elif w == "hundred":
            current = max(current, 1) * 100
        elif w in ("thousand", "million"):
            total += max(current, 1) * SCALES[w]
            current = 0
        elif re.fullmatch(r"\d+", w):
            current += int(w)
        else:
            raise ValueError(f"not a number: {text!r}")
    return sign * (total + current)


def ordinal_to_number(text: str) -> int:
    """``twenty first`` / ``21st`` / ``third`` -> int; ValueError otherwise."""
    text = text.lower().strip()
    m = re.fullmatch(r"(\d+)(st|nd|rd|th)?", text)
    if m:
        return int(m.group(1))
    words = text.split()
    if len(words) == 1 and words[0] in _ORDINALS:
        return _ORDINALS[words[0]]
    if len(words) == 2 and words[0] in TENS[2:] and words[1] in _ORDINALS and _ORDINALS[words[1]] < 10:
        return _WORD_VALUES[words[0]] + _ORDINALS[words[1]]
    raise ValueError(f"not an ordinal: {text!r}")


# ---- times (minutes after midnight) ----

_PM_WORDS = ("pm", "p m", "p.m.", "in the afternoon", "in the evening", "at night", "tonight", "this evening")
_AM_WORDS = ("am", "a m", "a.m.", "in the morning", "this morning")
TIMEOFDAY_PM = {"afternoon", "evening", "night", "tonight", "pm"}
TIMEOFDAY_AM = {"morning", "am"}


def _strip_marker(text: str) -> tuple[str, str | None]:
    for words, mark in ((_PM_WORDS, "pm"), (_AM_WORDS, "am")):
        for w in sorted(words, key=len, reverse=True):
            if text.endswith(" " + w) or text == w:
                return text[: len(text) - len(w)].strip(), mark
            m = re.fullmatch(r"(\d{1,2}(?::\d{2})?)" + re.escape(w.replace(" ", "")), text)
            if m:
                return m.group(1), mark
    return text, None


def parse_duration(text: str) -> int:
    """Spoken duration -> minutes: ``an hour``, ``two hours``, ``forty five minutes``, ``half an
    hour``, ``an hour and a half``, ``one and a half hours`` (at most a day); ValueError otherwise."""
    m = re.fullmatch(r"(.+?) (minute|minutes|hour|hours)( and a half)?", " ".join(text.lower().split()))
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    amount = words_to_number(m.group(1).replace("half an", "point five").replace("a half", "point five"))
    minutes = (amount + (0.5 if m.group(3) else 0)) * (60 if m.group(2).startswith("hour") else 1)
    if not 0 < minutes <= 24 * 60:
        raise ValueError(f"not a duration: {text!r}")
    return int(round(minutes))


def parse_time(text: str, timeofday: str | None = None) -> int:
    """Spoken time -> minutes after midnight: ``seven``, ``seven thirty pm``, ``7:30``, ``half past
    six``, ``quarter to eight``, ``noon``, ``three hours before eleven forty five am`` (a time
    relative to another, as an assistant copies it from a request and a calendar entry);
    ``timeofday`` (morning/evening...) decides am/pm when the time does not. ValueError when the
    words are not a time."""
    t = " ".join(text.lower().replace("o'clock", "").replace("oclock", "").split())
    rel = re.fullmatch(r"(.+?) (before|after) (.+)", t)
    if rel:
        try:
            minutes = parse_duration(rel.group(1))
        except ValueError:  # "quarter after seven": a clock time, read below
            minutes = None
        if minutes is not None:
            base = parse_time(rel.group(3), timeofday)
            return (base + (minutes if rel.group(2) == "after" else -minutes)) % 1440
    t = re.sub(r"^(at|for|by|around|about) ", "", t)
    t = re.sub(r"^a (quarter|half) ", r"\1 ", t)
    half = re.fullmatch(r"half ([a-z]+)", t)  # british "half seven" = seven thirty
    if half and half.group(1) in _WORD_VALUES:
        t = f"{half.group(1)} thirty"
    if t in ("noon", "midday", "twelve noon"):
        return 720
    if t in ("midnight", "twelve midnight"):
        return 0
    t, mark = _strip_marker(t)
    if mark is None and timeofday:
        tod = timeofday.lower().strip()
        mark = "pm" if tod in TIMEOFDAY_PM else "am" if tod in TIMEOFDAY_AM else None
    m = re.fullmatch(r"(\d{1,2})(?:[:.](\d{2}))?", t)
    if m:
        hour, minute = int(m.group(1)), int(m.group(2) or 0)
    else:
        rel = re.fullmatch(r"(half|quarter|[a-z ]+?)(?: minutes?)? (past|after|to) ([a-z]+)", t)
        if rel:
            amount = {"half": 30, "quarter": 15}.get(rel.group(1))
            amount = amount if amount is not None else int(words_to_number(rel.group(1)))
            hour = int(words_to_number(rel.group(3)))
            minute = amount if rel.group(2) != "to" else 60 - amount
            hour = hour if rel.group(2) != "to" else hour - 1
        else:
            words = t.split()
            if not words or words[0] not in _WORD_VALUES or words[0] in ("a", "an", "oh", "o"):
                raise ValueError(f"not a time: {text!r}")
            hour, rest = _WORD_VALUES[words[0]], words[1:]
            if hour >= 20 and rest and rest[0] in ONES[1:4]:  # twenty one .. twenty three
                hour, rest = hour + _WORD_VALUES[rest[0]], rest[1:]
            minute = int(words_to_number(" ".join(rest))) if rest else 0
    if not (0 <= hour <= 23 and 0 <= minute <= 59) or (mark and not 1 <= hour <= 12):
        raise ValueError(f"not a time: {text!r}")
    if mark == "pm" and hour < 12:
        hour += 12
    elif mark == "am" and hour == 12:
        hour = 0
    return hour * 60 + minute


def format_time(minutes: int) -> str:
    """Minutes after midnight -> ``seven thirty pm`` / ``seven oh five am`` / ``noon``."""
    hour, minute = divmod(int(minutes) % 1440, 60)
    if (hour, minute) == (12, 0):
        return "noon"
    if (hour, minute) == (0, 0):
        return "midnight"
    mark = "am" if hour < 12 else "pm"
    h12 = hour % 12 or 12
    mins = "" if minute == 0 else (" oh " + ONES[minute] if minute < 10 else " " + number_to_words(minute))
    return f"{number_to_words(h12)}{mins} {mark}"


def hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def from_hhmm(text: str) -> int:
    h, m = text.split(":")
    return int(h) * 60 + int(m)


# ---- dates ----

def parse_iso(text: str) -> dt.datetime:
    """``YYYY-MM-DDTHH:MM`` -> datetime; ValueError naming the expected form."""
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M")
    except (TypeError, ValueError):
        raise ValueError(f"clock time {text!r} is not YYYY-MM-DDTHH:MM") from None


def parse_date(text: str, today: dt.date) -> dt.date:
    """Spoken date relative to ``today``: ``today``, ``tomorrow``, ``friday``, ``next monday``,
    ``this weekend``, ``next week``, ``march third``, ``the third of march``, ``the twenty first``.
    ValueError when the words are not a date."""
    t = " ".join(text.lower().replace(",", " ").split())
    t = re.sub(r"^(on|for|by) ", "", t)
    t = re.sub(r"^the ", "", t)
    simple = {"today": 0, "tonight": 0, "this evening": 0, "this morning": 0, "this afternoon": 0, "now": 0,
              "tomorrow": 1, "tomorrow morning": 1, "tomorrow evening": 1, "tomorrow night": 1,
              "tomorrow afternoon": 1, "yesterday": -1, "day after tomorrow": 2, "next week": 7}
    if t in simple:
        return today + dt.timedelta(days=simple[t])
    m = re.fullmatch(r"(?:(this|next|coming|this coming) )?(monday|tuesday|wednesday|thursday|friday|saturday|sunday|weekend)", t)
    if m:
        target = WEEKDAYS.index("saturday" if m.group(2) == "weekend" else m.group(2))
        ahead = (target - today.weekday()) % 7
        if m.group(1) == "next" and ahead == 0:
            ahead = 7
        return today + dt.timedelta(days=ahead)
    m = re.fullmatch(r"in (\w+(?: \w+)?) days?", t)
    if m:
        return today + dt.timedelta(days=int(words_to_number(m.group(1))))
    day = month = None
    m = re.fullmatch(r"([a-z]+) (?:the )?([a-z0-9 ]+)", t)
    if m and m.group(1) in MONTHS:
        month, day = MONTHS.index(m.group(1)) + 1, ordinal_to_number(m.group(2)) if not m.group(2).isdigit() else int(m.group(2))
    else:
        m = re.fullmatch(r"([a-z0-9 ]+?)(?: of ([a-z]+))?", t)
        if m and (m.group(2) is None or m.group(2) in MONTHS):
            day = ordinal_to_number(m.group(1))
            month = MONTHS.index(m.group(2)) + 1 if m.group(2) else None
    if day is None:
        raise ValueError(f"not a date: {text!r}")
    explicit_month = month is not None
    year, month = today.year, month or today.month
    try:
        d = dt.date(year, month, day)
        if d < today:  # a date already passed means the next one: next year, or next month
            d = dt.date(year + 1, month, day) if explicit_month else (
                dt.date(year + (month == 12), month % 12 + 1, day))
    except ValueError:
        raise ValueError(f"not a date: {text!r}") from None
    return d


def format_date(d: dt.date, today: dt.date) -> str:
    """``today`` / ``tomorrow`` / ``yesterday`` / a weekday within the week / ``march third``."""
    delta = (d - today).days
    if delta == 0:
        return "today"
    if delta == 1:
        return "tomorrow"
    if delta == -1:
        return "yesterday"
    if 1 < delta < 7:
        return WEEKDAYS[d.weekday()]
    return f"{MONTHS[d.month - 1]} {ordinal_words(d.day)}"
