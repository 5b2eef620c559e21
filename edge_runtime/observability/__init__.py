"""What the runtime says about itself: counters and histograms (``metrics``), a Prometheus endpoint, and the
``status`` table that reads any runtime's topics."""
