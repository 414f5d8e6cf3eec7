//! Buffering between the readers and the sinks: per-table Arrow batch building for CDC
//! (changes become rows of the CDC file layout, held per table, date folder and schema until
//! the flush policy writes them), the memory budget every buffer counts against, and the spill
//! files that take buffered batches when the budget is exceeded.

pub mod budget;
pub mod changes;
pub mod spill;
