//! `usage_logs.server`: the Ollama server that answered each request (SPEC §11).
//! Nullable: rows written before several servers existed, and requests that reached no
//! server, have none.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum UsageLogs {
    Table,
    Server,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(UsageLogs::Table)
                    .add_column(ColumnDef::new(UsageLogs::Server).text().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(UsageLogs::Table)
                    .drop_column(UsageLogs::Server)
                    .to_owned(),
            )
            .await
    }
}
