"""Plausible hand-written bugs of the methods (issue 18), applied one at a time to a copy of src/;
prints whether the fast method tests catch each.

    python benchmarks/hand_mutations.py            # the issue's categories
    python benchmarks/hand_mutations.py new        # the survivors of the first mutmut pass
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WT = Path(__file__).resolve().parents[1]
M2 = [
 ("sdm continue->break", "methods/boundary.py", "            if not mask.any():\n                continue\n            outside", "            if not mask.any():\n                break\n            outside"),
 ("MT teacher softmax dim 2", "methods/mean_teacher.py", "teacher_probs = torch.softmax(self.t.teacher_forward(noisy(x_u, self.p.noise_sigma, self.p.noise_clip)), 1)", "teacher_probs = torch.softmax(self.t.teacher_forward(noisy(x_u, self.p.noise_sigma, self.p.noise_clip)), 2)"),
 ("MT (s+t)^2", "methods/mean_teacher.py", "cons = ((student_probs - teacher_probs) ** 2).mean()", "cons = ((student_probs + teacher_probs) ** 2).mean()"),
 ("UA-MT noisy(x, clip)", "methods/ua_mt.py", "teacher_probs = torch.softmax(self.t.teacher_forward(noisy(x_u, self.p.noise_sigma, self.p.noise_clip)), 1)", "teacher_probs = torch.softmax(self.t.teacher_forward(noisy(x_u, self.p.noise_clip)), 1)"),
 ("UA-MT frac / ln K", "methods/ua_mt.py", "return frac * math.log(self.t.num_classes)", "return frac / math.log(self.t.num_classes)"),
 ("supervised log key", "methods/supervised.py", '{"sup": loss.detach()}', '{"SUP": loss.detach()}'),
 ("hand-over needs 2 iterations", "methods/bcp.py", "self.pretrain_iterations > 0:", "self.pretrain_iterations > 1:"),
]
M = [
 ("align GT both sides", "methods/bfa.py", "b * (origin <= 0.5) * (kept > 0.5)", "b * (origin > 0.5) * (kept > 0.5)"),
 ("boundaries after pasting", "methods/bfa.py", "out.append(paste(self.boundaries(outer[1]), self.boundaries(inner[1]), mix[\"box\"]))", "out.append(self.boundaries(paste(outer[1], inner[1], mix[\"box\"])))"),
 ("BN buffers copied", "training/ema.py", "        if tb.dtype.is_floating_point:\n", "        if False:\n"),
 ("no EMA warm-up", "training/ema.py", "return min(1.0 - 1.0 / (iteration + 1), decay)", "return decay"),
 ("origin map swapped", "methods/bcp.py", "paste(float(outer[3]) * one, float(inner[3]) * one, box)", "paste(float(inner[3]) * one, float(outer[3]) * one, box)"),
 ("no teacher hand-over", "methods/bcp.py", "            self.t.copy_student_to_teacher()", "            pass"),
 ("one mixing direction twice", "methods/bcp.py", "pieces = [(lab_a, unl_a), (unl_b, lab_b)]", "pieces = [(lab_a, unl_a), (lab_b, unl_b)]"),
 ("pseudo weight 0", "methods/bcp.py", "return self.p.pseudo_weight * sigmoid_rampup(", "return 0.0 * sigmoid_rampup("),
 ("UA-MT mask inverted", "methods/ua_mt.py", "(entropy < self.threshold(iteration))", "(entropy > self.threshold(iteration))"),
 ("noise on the student", "methods/mean_teacher.py", "logits = self.student(torch.cat([x_l, x_u]))", "logits = self.student(torch.cat([x_l, noisy(x_u, self.p.noise_sigma, self.p.noise_clip)]))"),
 ("Gaussian sigma 1/4", "inference/sliding_window.py", "sigma_scale: float = 1.0 / 8.0", "sigma_scale: float = 1.0 / 4.0"),
 ("memory not resumed", "methods/bfa.py", "self.memory = state.get(\"memory\")", "pass"),
 ("memory momentum reversed", "methods/bfa.py", "self.p.memory_momentum * self.memory + (1 - self.p.memory_momentum) * current", "(1 - self.p.memory_momentum) * self.memory + self.p.memory_momentum * current"),
 ("boundary pooling by average", "methods/boundary.py", "F.adaptive_max_pool3d(boundary, size) if boundary.ndim == 5 else F.adaptive_max_pool2d(boundary, size)", "F.adaptive_avg_pool3d(boundary, size) if boundary.ndim == 5 else F.adaptive_avg_pool2d(boundary, size)"),
 ("confidence ignored", "methods/bcp.py", "keep = (conf >= self.p.confidence).float()", "keep = torch.ones_like(conf)"),
 ("pseudo boundary sees GT", "methods/bfa.py", "b_ps = boundary_loss(b_logits, b_target, ((origin <= 0.5) & (kept > 0.5)).float())", "b_ps = boundary_loss(b_logits, b_target, torch.ones_like(origin))"),
 ("small classes aligned", "methods/bfa.py", "valid = (n_gt >= self.p.min_boundary_voxels) & (n_ps >= self.p.min_boundary_voxels)", "valid = (n_gt >= 1) & (n_ps >= 1)"),
 ("gradient into GT prototypes", "methods/bfa.py", "F.cosine_similarity(proto_ps, proto_gt.detach(), dim=1)", "F.cosine_similarity(proto_ps, proto_gt, dim=1)"),
]
only = sys.argv[1:]
for name, rel, old, new in (M2 if only == ['new'] else M):
    if only and only != ['new'] and name not in only:
        continue
    tmp = Path(tempfile.mkdtemp()) / "src"
    shutil.copytree(WT / "src", tmp)
    f = tmp / "bfaseg" / rel
    text = f.read_text()
    assert text.count(old) == 1, (name, text.count(old))
    f.write_text(text.replace(old, new))
    env = {**os.environ, "PYTHONPATH": str(tmp), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow",
                        "tests/test_method_pieces.py", "tests/test_methods.py"], cwd=WT, env=env, capture_output=True, text=True)
    last = [l for l in r.stdout.splitlines() if l.startswith("FAILED")][:1]
    print(f"{'CAUGHT ' if r.returncode else 'SURVIVED'} {name}: {last[0] if last else r.stdout.splitlines()[-1]}", flush=True)
    shutil.rmtree(tmp.parent, ignore_errors=True)
