"""Stand-in for BCP's code/ACDC_BCP_train.py with the entry points the parity harness relies on (its test):
argparse as the reference (--pre_iterations, --max_iterations, --labelnum, patch_size type=list), a
__main__ block that makes ./model/BCP/ACDC_<exp>_<labelnum>_labeled/{pre_train,self_train}, copies
../code/ACDC_BCP_train.py and calls pre_train(args, snapshot_path) then self_train(args, pre_snapshot_path,
snapshot_path); each stage validates every iteration and saves a model only when validation improves;
self-training starts from pre_train/<model>_best_model.pth ({"net", "opt"}) and trains a student beside a
BCP_net(ema=True) teacher; save_net_opt; .cuda() everywhere and a DataLoader with workers. What it saw: seen.json."""
import argparse
import json
import os
import shutil

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from networks.net_factory import BCP_net
from utils import val_2d

parser = argparse.ArgumentParser()
parser.add_argument("--root_path", type=str, default="../data/ACDC")
parser.add_argument("--exp", type=str, default="BCP")
parser.add_argument("--model", type=str, default="unet")
parser.add_argument("--pre_iterations", type=int, default=10000)
parser.add_argument("--max_iterations", type=int, default=30000)
parser.add_argument("--batch_size", type=int, default=24)
parser.add_argument("--base_lr", type=float, default=0.01)
parser.add_argument("--patch_size", type=list, default=[256, 256])
parser.add_argument("--seed", type=int, default=1337)
parser.add_argument("--num_classes", type=int, default=4)
parser.add_argument("--labeled_bs", type=int, default=12)
parser.add_argument("--labelnum", type=int, default=7)
args = parser.parse_args()
SEEN = {"argv": vars(args), "num_workers": [], "dtypes": set(), "saved_on_validation": []}


def save_net_opt(net, optimizer, path):
    torch.save({"net": net.state_dict(), "opt": optimizer.state_dict()}, path)


def fingerprint(net):
    return float(sum(v.double().sum() for v in net.state_dict().values() if v.is_floating_point()))


class Slices(Dataset):
    def __init__(self, root, size):
        self.root, self.size = root, size
        self.names = open(os.path.join(root, "train_slices.list")).read().split()

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        with h5py.File(f"{self.root}/data/slices/{self.names[i]}.h5", "r") as f:
            image, label = (torch.from_numpy(np.asarray(f[k], np.float32))[None, None] for k in ("image", "label"))
        image = F.interpolate(image, size=tuple(self.size), mode="nearest")[0]
        label = F.interpolate(label, size=tuple(self.size), mode="nearest")[0, 0].long()
        return {"image": image, "label": label}


class LabeledThenUnlabeled:
    """Index batches: labeled_bs of the first n_labeled slices, then the rest of the batch from the others."""

    def __init__(self, n_labeled, n_total, batch, labeled_bs):
        self.labeled, self.unlabeled = list(range(n_labeled)), list(range(n_labeled, n_total))
        self.batch, self.labeled_bs = batch, labeled_bs

    def __len__(self):
        return len(self.labeled) // self.labeled_bs

    def __iter__(self):
        rest = self.batch - self.labeled_bs
        for k in range(len(self)):
            yield (self.labeled[k * self.labeled_bs:(k + 1) * self.labeled_bs]
                   + [self.unlabeled[(k * rest + j) % len(self.unlabeled)] for j in range(rest)])


def loader():
    if "ACDC" not in args.root_path:  # as the reference: only then the ACDC table of labeled slices per patient count
        raise SystemExit("--root_path without ACDC: not the ACDC slice table")
    labeled = {1: 32, 3: 68, 7: 136}[args.labelnum]
    data = Slices(args.root_path, args.patch_size)
    batches = LabeledThenUnlabeled(labeled, len(data), args.batch_size, args.labeled_bs)
    out = DataLoader(data, batch_sampler=batches, num_workers=2, worker_init_fn=lambda i: None)
    SEEN["num_workers"].append(out.num_workers)
    return out


def step(model, opt, x, y):
    out = model(x)
    SEEN["dtypes"].add(str(out.dtype))
    loss = F.cross_entropy(out, y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def validate(model, x, y, best, path, save):
    model.eval()
    score = float(np.mean(val_2d.test_single_volume(x[:1], y[:1], model, classes=args.num_classes)))
    model.train()
    if score > best:
        save(path)
        SEEN["saved_on_validation"].append(path)
    return max(score, best)


def pre_train(args, snapshot_path):
    model = BCP_net(in_chns=1, class_num=args.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=args.base_lr, momentum=0.9)
    done, best = 0, 0.0
    while done < args.pre_iterations:
        for batch in loader():
            x, y = batch["image"].cuda(), batch["label"].cuda()
            half = args.labeled_bs // 2
            box = torch.zeros_like(x)
            box[..., : x.shape[-2] // 2, :] = 1
            mixed = x[:half] * box[:half] + x[half:2 * half] * (1 - box[:half])
            target = torch.where(box[:half, 0] > 0, y[:half], y[half:2 * half])
            step(model, opt, mixed, target)
            done += 1
            best = validate(model, x, y, best, os.path.join(snapshot_path, f"{args.model}_best_model.pth"),
                            lambda path: save_net_opt(model, opt, path))
            if done >= args.pre_iterations:
                break
    SEEN["pre_train"] = {"iterations": done, "last": fingerprint(model)}


def self_train(args, pre_snapshot_path, snapshot_path):
    model = BCP_net(in_chns=1, class_num=args.num_classes)
    teacher = BCP_net(in_chns=1, class_num=args.num_classes, ema=True)
    opt = torch.optim.SGD(model.parameters(), lr=args.base_lr, momentum=0.9)
    state = torch.load(os.path.join(pre_snapshot_path, f"{args.model}_best_model.pth"))
    model.load_state_dict(state["net"])
    teacher.load_state_dict(state["net"])
    opt.load_state_dict(state["opt"])
    SEEN["self_train"] = {"started_from": fingerprint(model)}
    done, best = 0, 0.0
    while done < args.max_iterations:
        for batch in loader():
            x, y = batch["image"].cuda(), batch["label"].cuda()
            with torch.no_grad():
                pseudo = teacher(x[args.labeled_bs:]).argmax(1)
            step(model, opt, x, torch.cat([y[:args.labeled_bs], pseudo]))
            with torch.no_grad():
                for t, s in zip(teacher.state_dict().values(), model.state_dict().values()):
                    t.copy_(0.99 * t + 0.01 * s) if t.is_floating_point() else t.copy_(s)
            done += 1
            best = validate(model, x, y, best, os.path.join(snapshot_path, f"{args.model}_best_model.pth"),
                            lambda path: torch.save(model.state_dict(), path))
            if done >= args.max_iterations:
                break
    SEEN["self_train"].update(iterations=done, last=fingerprint(model), teacher=fingerprint(teacher))


if __name__ == "__main__":
    torch.manual_seed(args.seed)
    folder = f"./model/BCP/ACDC_{args.exp}_{args.labelnum}_labeled"
    pre_path, self_path = folder + "/pre_train", folder + "/self_train"
    for path in (pre_path, self_path):
        os.makedirs(path, exist_ok=True)
    shutil.copy("../code/ACDC_BCP_train.py", self_path)
    pre_train(args, pre_path)
    self_train(args, pre_path, self_path)
    SEEN["dtypes"] = sorted(SEEN["dtypes"])
    with open("seen.json", "w") as f:
        json.dump(SEEN, f)
