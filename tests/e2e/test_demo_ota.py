"""`roadside demo --ota`: the demo's real MicroPython nodes get an update (the node app one
patch version up, built with mpy-cross) rolled through them by the gateway, canary first,
while every record they produce still arrives exactly once, in order, at the receiver."""

from __future__ import annotations

from e2e_harness import options, run_chain, wait_until
from roadside.tools.sim.gateway_toml import GatewaySettings


def test_demo_rolls_an_update_through_its_nodes(tmp_path):
    opts = options(tmp_path, nodes=2, ota=True,
                   # 921,600 baud: half of it moves the ~75 KB bundle in about 2 s per node
                   settings=GatewaySettings(max_records=50, max_age_s=0.5, baudrate=921600))

    async def body(demo, session):
        demo.start_ota(session)

        async def ended() -> bool:
            assert demo.ota_task is not None
            if demo.ota_task.done():
                demo.ota_task.result()          # raises what failed in it
            return demo.ota is not None and demo.ota.result is not None

        await wait_until(ended, 60, "the demo's rollout to end")
        result = demo.ota.result
        assert result["state"] == "done", result
        assert [n["state"] for n in result["nodes"]] == ["done", "done"]
        assert result["version"] == demo.ota.version

    summary = run_chain(opts, body)
    assert summary.ok, "\n".join(summary.lines())
