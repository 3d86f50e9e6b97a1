//! Signed update bundles and the A/B boot slots of an Aisle appliance (see ARCHITECTURE.md,
//! "Firmware images").
