"""N-body data: the two simulators (`simulate`) and the data sets, graphs and batches built from them (`datasets`)."""
