import sys, cProfile, pstats, os
sys.argv=["x"]
os.environ.setdefault("OMP_NUM_THREADS","1")
import profile_step as ps
from acdc_bench import numerics
numerics.ensure("portable", reexec=True)
import torch; torch.set_num_threads(1)
from acdc_bench import config as suites
from acdc_bench.run import loop
suite = suites.load_suite("fashion-mnist-10")
ex = int(os.environ.get("EX","256"))
b = ps._build(suites, loop, suite, os.environ.get("CASE","rigl"), "auto", examples=ex)
b.steps(20)
import time
t=time.perf_counter(); b.steps(100); print("ms/step", (time.perf_counter()-t)*10)
pr=cProfile.Profile(); pr.enable(); b.steps(100); pr.disable()
st=pstats.Stats(pr); st.sort_stats("tottime").print_stats(25)
