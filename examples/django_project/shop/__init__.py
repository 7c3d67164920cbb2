"""The example's Django app: orders, and the receipt job each order enqueues."""
