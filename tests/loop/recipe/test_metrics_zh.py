"""SubEM on LongBench's Chinese tasks uses LongBench's normalize_zh_answer; bare-string golds raise."""

import pytest
from sealong.loop.recipe.metrics import is_zh_task, normalize_zh, subem


@pytest.mark.parametrize(
    "text, expected",
    [
        # answers in the style of LongBench's multifieldqa_zh / dureader records
        ("中华人民共和国 成立于 1949年。", "中华人民共和国成立于1949年"),
        ("“北京”，是中国的首都！", "北京是中国的首都"),
        ("答案：ABC-123（见第2段）", "答案abc123见第2段"),
        ("《红楼梦》", "《红楼梦"),  # LongBench's set has 》 but not 《: kept as LongBench does
        ("段落 12", "段落12"),
        ("\t  Hello, World…  ", "helloworld"),
    ],
)
def test_normalize_zh_as_longbench(text, expected):
    assert normalize_zh(text) == expected


def test_subem_zh_tasks():
    assert is_zh_task("multifieldqa_zh") and is_zh_task("dureader") and is_zh_task("lsht")
    assert not is_zh_task("hotpotqa") and not is_zh_task(None)
    pred = "根据文章，中华人民共和国成立于 1949 年 10 月 1 日。"
    assert subem(pred, ["1949年10月1日"], "multifieldqa_zh") == 1.0
    assert subem(pred, ["1949年10月1日"], "hotpotqa") == 0.0  # English normalisation keeps the spaces
    assert subem("答案是：“北京”。", ["北京"], "dureader") == 1.0
    assert subem("上海", ["北京"], "dureader") == 0.0


def test_subem_rejects_a_bare_string():
    with pytest.raises(TypeError, match="list of strings"):
        subem("the answer is paris", "paris")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        subem("x", [1])  # type: ignore[list-item]
    assert subem("the answer is Paris.", ["paris"]) == 1.0
