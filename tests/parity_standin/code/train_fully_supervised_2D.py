"""Stand-in for SSL4MIS's train_fully_supervised_2D.py with the same interface (the parity harness test):
argparse as the reference (patch_size type=list), net_factory, .cuda(), a DataLoader with workers,
in-loop validation, and what it saw written to seen.json in its working directory."""
import argparse
import json

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from networks.net_factory import net_factory
from val_2D import test_single_volume

parser = argparse.ArgumentParser()
parser.add_argument("--root_path", type=str, default="../data/ACDC")
parser.add_argument("--exp", type=str, default="ACDC/Fully_Supervised")
parser.add_argument("--model", type=str, default="unet")
parser.add_argument("--num_classes", type=int, default=4)
parser.add_argument("--max_iterations", type=int, default=30000)
parser.add_argument("--batch_size", type=int, default=24)
parser.add_argument("--base_lr", type=float, default=0.01)
parser.add_argument("--patch_size", type=list, default=[256, 256])
parser.add_argument("--seed", type=int, default=1337)
parser.add_argument("--labeled_num", type=int, default=50)
args = parser.parse_args()


def patients_to_slices(dataset, patiens_num):  # the reference's table and key rule (ACDC only here)
    ref_dict = {"3": 68, "7": 136, "14": 256, "21": 396, "28": 512, "35": 664, "140": 1312}
    return ref_dict[str(patiens_num)] if "ACDC" in dataset else None


if __name__ == "__main__":
    torch.manual_seed(args.seed)
    names = open(args.root_path + "/train_slices.list").read().split()
    labeled = names[:patients_to_slices(args.root_path, args.labeled_num)]  # BaseDataSets(num=...): the first num
    with h5py.File(args.root_path + "/data/slices/" + names[0] + ".h5", "r") as f:
        image = torch.from_numpy(f["image"][:]).float()
    x = torch.nn.functional.interpolate(image[None, None], size=tuple(args.patch_size)).repeat(args.batch_size, 1, 1, 1)
    y = (x[:, 0] > x.mean()).long()
    model = net_factory(net_type=args.model, in_chns=1, class_num=args.num_classes).cuda()
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, num_workers=4)
    opt = torch.optim.SGD(model.parameters(), lr=args.base_lr)
    dtypes = []
    for it in range(args.max_iterations):
        for xb, yb in loader:
            out = model(xb.cuda())
            dtypes.append(str(out.dtype))
            loss = torch.nn.functional.cross_entropy(out, yb.cuda())
            opt.zero_grad()
            loss.backward()
            opt.step()
    metrics = test_single_volume(x[:1], y[:1], model, classes=args.num_classes)
    json.dump({"patch_size": args.patch_size, "num_workers": loader.num_workers, "metrics": metrics,
               "dtypes": sorted(set(dtypes)), "argv": vars(args),
               "labeled_slices": len(labeled), "slices_listed": len(names)}, open("seen.json", "w"))
