# mypy only (make lint): both hardware layers, and every role's io on both, against the
# contract in roadside_node/hw/contract.pyi. Nothing imports this file; it is not deployed.
from roadside_node.hw import (esp32, esp32_rain, esp32_signal, esp32_toll, esp32_water, sim,
                              sim_rain, sim_signal, sim_toll, sim_water)
from roadside_node.hw.contract import HW, RainIO, SignalIO, TollIO, WaterIO


def check(config, hw_esp32: esp32.Esp32HW, hw_sim: sim.SimHW):
    boards: list[HW] = [hw_esp32, hw_sim]
    water: list[WaterIO] = [esp32_water.IO(hw_esp32, config), sim_water.IO(hw_sim, config)]
    signal: list[SignalIO] = [esp32_signal.IO(hw_esp32, config), sim_signal.IO(hw_sim, config)]
    toll: list[TollIO] = [esp32_toll.IO(hw_esp32, config), sim_toll.IO(hw_sim, config)]
    rain: list[RainIO] = [esp32_rain.IO(hw_esp32, config), sim_rain.IO(hw_sim, config)]
    return boards, water, signal, toll, rain
