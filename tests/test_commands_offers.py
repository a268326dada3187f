"""`ctl offers`: the best 50 in the table and a line saying how many more; --all and --json give all."""
import json

from shellrent.broker.commands import Commands


class Market:
    def __init__(self, n: int):
        self.offers_ = [{"id": f"h{i}/RTX_4090", "host_id": f"h{i}", "gpu_name": "RTX 4090", "num_gpus": 1,
                         "gpu_ram": 24, "cpu_cores": 8, "cpu_ram": 32, "disk_space": 100, "dph": 0.4 + i / 1000,
                         "reliability": 1.0, "geolocation": "DE", "gpus": ["U"], "images": "*", "price": 1,
                         "verified": i % 2 == 0, "tflops": 150.0 if i % 2 == 0 else 0.0}
                        for i in range(n)]

    async def offers(self, text="", order=None):
        return self.offers_


async def test_the_table_shows_the_best_50_and_says_how_many_more():
    cmds = Commands(Market(60), "alice")
    code, text = await cmds.run("offers")
    lines = text.splitlines()
    assert code == 0 and len(lines) == 1 + 50 + 1
    assert lines[1].startswith("h0/RTX_4090") and lines[50].startswith("h49/")
    assert "TFLOPS" in lines[0] and " 150 " in lines[1] and " - " in lines[2]  # measured, or not verified
    assert lines[-1] == "... and 10 more: narrow the query, or add --all (or --json)"
    code, text = await cmds.run("offers --all")
    assert len(text.splitlines()) == 61 and "more" not in text
    code, text = await cmds.run("offers --json")
    assert len(json.loads(text)) == 60


async def test_a_short_market_has_no_footer():
    code, text = await Commands(Market(3), "alice").run("offers")
    assert len(text.splitlines()) == 4 and "more" not in text


async def test_an_empty_result_says_why_and_leftover_words_are_errors():
    class Explained(Market):
        async def offers(self, text="", order=None):
            return []

        async def why_none(self, text):
            return f"{text} matches none of the 3 offers"
    market = Explained(3)
    market.market = market
    code, text = await Commands(market, "alice").run("offers gpu_name=a100")
    assert (code, text) == (0, "no offer matches: gpu_name=a100 matches none of the 3 offers\n")
    for line in ("balance extra", "history now", "ls all"):
        code, text = await Commands(market, "alice").run(line)
        assert code == 2 and text.startswith("ctl: usage: "), line
