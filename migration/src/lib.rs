//! Schema migrations. Every schema change is a new migration appended to [`Migrator`];
//! the same migrations run on SQLite and PostgreSQL.

pub use sea_orm_migration::prelude::*;

mod m20261125_000001_initial;
mod m20261201_000002_usage_server;
mod m20261202_000003_governance;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_initial::Migration),
            Box::new(m20261201_000002_usage_server::Migration),
            Box::new(m20261202_000003_governance::Migration),
        ]
    }
}
