"""Upstream's ``tutorial_dataset_test.py``: check that the Fill50K data set reads (``python -m training.fill50k``)."""
from tutorial_dataset import MyDataset

if __name__ == "__main__":
    dataset = MyDataset()
    print(len(dataset))
    item = dataset[min(1234, len(dataset) - 1)]
    print(item["txt"])
    print(item["jpg"].shape)
    print(item["hint"].shape)
