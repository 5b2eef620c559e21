"""The serving core: what runs on the device. Inputs from the link are batched, run by an engine and
answered on the link; reload, control, announcements and snapshots sit beside the loop."""
