"""The one rule that tells a pleasantry from a problem, and the category proposed from words."""

from __future__ import annotations

from handlers.free_text import guess_category, is_courtesy, split_keywords


def test_pleasantries_are_recognised_whatever_their_punctuation() -> None:
    for text in ("谢谢", "谢谢你们！", "好的", "你好", "您好～", "收到，辛苦了！", "嗯嗯", "👍",
                 "OK, thanks!", "Thank you very much", "1", "？", "  "):
        assert is_courtesy(text), text


def test_a_problem_is_not_a_pleasantry_even_with_greetings_around_it() -> None:
    for text in ("你好，楼下的路灯坏了好几天了", "谢谢，另外三楼漏水了", "电梯坏了", "灯坏",
                 "hello, the lift is broken"):
        assert not is_courtesy(text), text


def test_the_category_with_most_words_in_the_text_is_proposed() -> None:
    categories = [
        ("repair", split_keywords("楼道灯,路灯,水管,门禁,电梯,坏了")),
        ("dispute", split_keywords("噪音，漏水、占道")),
        ("sanitation", ["垃圾", "小广告"]),
    ]
    assert guess_category("你好，楼下的路灯坏了好几天了", categories) == "repair"
    assert guess_category("楼上噪音太大，还漏水", categories) == "dispute"
    assert guess_category("水管漏水", categories) == "repair"  # a tie: the first listed
    assert guess_category("隔壁天天吵架", categories) is None
