"""Reading digits: image preprocessing, predictions on files, and batch predictions in shards."""
