from support import micropython


def test_runs_the_real_micropython_interpreter():
    out = micropython.run_stdout("print(sys.implementation.name)")
    assert out.strip() == "micropython"
