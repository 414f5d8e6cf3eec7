//! Per-table Arrow batch building for CDC: changes become rows of the CDC file layout, held
//! per table, date folder and schema until the flush policy (bytes or age) writes them.

pub mod changes;
