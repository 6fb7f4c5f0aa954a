"""What a resident's words outside any flow mean: a courtesy, or a problem to report.

One rule, in one place (:func:`is_courtesy`): a message is a courtesy when, once spaces,
punctuation and emoji are set aside, it is made only of the polite words and particles below
("谢谢你们！", "好的", "你好", "收到，辛苦了", "ok thanks"), or has fewer than
:data:`MIN_MEANINGFUL` characters left. Anything else is a problem described in the resident's
own words, and starts an order with it as the description.

A category is proposed from the words (:func:`guess_category`): the category whose keywords
(the community file's ``keywords``, also what the city platform reads) or display name occur in
the text most often; none when nothing matches, and the resident is asked.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

#: Fewer meaningful characters than this is never a problem description ("1", "?", "嗯").
MIN_MEANINGFUL = 2

#: Polite words and sentence particles, Chinese and English. A message made only of these
#: starts nothing. Kept lower-case; longest first when matching.
COURTESY_WORDS: frozenset[str] = frozenset(
    {
        # greetings and goodbyes
        "你好", "您好", "你们好", "大家好", "早上好", "上午好", "下午好", "晚上好", "早",
        "再见", "拜拜", "晚安",
        # thanks
        "谢谢", "多谢", "感谢", "谢了", "谢啦", "非常感谢", "太感谢了", "麻烦了", "辛苦了",
        "辛苦", "不客气", "给你们点赞", "点赞",
        # agreement and acknowledgement
        "好的", "好", "好滴", "行", "可以", "嗯", "嗯嗯", "哦", "噢", "喔", "收到", "知道了",
        "明白", "明白了", "了解", "没事", "没事了", "没问题", "对", "是", "是的",
        # who is thanked, and particles
        "你", "您", "你们", "大家", "同志", "啊", "呀", "哈", "哈哈", "啦", "了", "呢", "吧",
        "的", "哟", "呐", "嘛", "很", "非常", "真",
        # English
        "hi", "hello", "hey", "thanks", "thank", "you", "thx", "ok", "okay", "yes", "bye",
        "good", "great", "fine", "got", "it", "much", "very", "so", "a", "lot", "morning",
    }
)
_LONGEST = max(len(w) for w in COURTESY_WORDS)


def meaningful(text: str) -> str:
    """The text without spaces, punctuation, symbols and emoji, lower-cased."""
    kept = []
    for ch in text.lower():
        category = unicodedata.category(ch)
        if category[0] in ("L", "N"):
            kept.append(ch)
    return "".join(kept)


def _only_courtesy(core: str) -> bool:
    """Whether ``core`` splits entirely into courtesy words (longest match first)."""
    reachable = [False] * (len(core) + 1)
    reachable[0] = True
    for start in range(len(core)):
        if not reachable[start]:
            continue
        for size in range(1, min(_LONGEST, len(core) - start) + 1):
            if core[start : start + size] in COURTESY_WORDS:
                reachable[start + size] = True
    return reachable[len(core)]


def is_courtesy(text: str) -> bool:
    """Whether free text is only a pleasantry (or too short to mean anything): it is answered
    politely and starts nothing."""
    core = meaningful(text)
    return len(core) < MIN_MEANINGFUL or _only_courtesy(core)


def split_keywords(raw: str | None) -> list[str]:
    """A category's keywords as stored (comma separated; Chinese commas too)."""
    if not raw:
        return []
    return [w.strip() for w in raw.replace("，", ",").replace("、", ",").split(",") if w.strip()]


def guess_category(
    text: str, categories: Sequence[tuple[str, Iterable[str]]]
) -> str | None:
    """The code of the category whose words occur most in ``text`` (ties: the first listed);
    ``None`` when none occurs. ``categories`` are ``(code, words)``, in the menu's order."""
    lowered = text.lower()
    best, best_hits = None, 0
    for code, words in categories:
        hits = sum(1 for w in words if w and w.lower() in lowered)
        if hits > best_hits:
            best, best_hits = code, hits
    return best
