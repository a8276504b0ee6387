//! Governance (SPEC §4.2, §13): a key's previous secret during a rotation grace period,
//! the audit log, and the index the usage retention job deletes by.
//!
//! `virtual_keys.previous_key_hash` + `grace_until` hold the one older plaintext that
//! still works (as its SHA-256, like `key_hash`); at most two secrets per key can work.
//! `audit_logs` keeps `team_id` beside the object so team admins can be shown their
//! teams' rows without reading every row's JSON.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum VirtualKeys {
    Table,
    PreviousKeyHash,
    GraceUntil,
}

#[derive(DeriveIden)]
enum UsageLogs {
    Table,
    StartedAt,
}

#[derive(DeriveIden)]
enum AuditLogs {
    Table,
    Id,
    At,
    Actor,
    Action,
    ObjectType,
    ObjectId,
    TeamId,
    Before,
    After,
    RequestId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(VirtualKeys::Table)
                    .add_column(ColumnDef::new(VirtualKeys::PreviousKeyHash).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(VirtualKeys::Table)
                    .add_column(
                        ColumnDef::new(VirtualKeys::GraceUntil)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_virtual_keys_previous_hash")
                    .table(VirtualKeys::Table)
                    .col(VirtualKeys::PreviousKeyHash)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_usage_logs_started")
                    .table(UsageLogs::Table)
                    .col(UsageLogs::StartedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AuditLogs::Table)
                    .col(
                        ColumnDef::new(AuditLogs::Id)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(AuditLogs::At)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(AuditLogs::Actor).text().not_null())
                    .col(ColumnDef::new(AuditLogs::Action).text().not_null())
                    .col(ColumnDef::new(AuditLogs::ObjectType).text().not_null())
                    .col(ColumnDef::new(AuditLogs::ObjectId).text().not_null())
                    .col(ColumnDef::new(AuditLogs::TeamId).text().null())
                    .col(ColumnDef::new(AuditLogs::Before).text().null())
                    .col(ColumnDef::new(AuditLogs::After).text().null())
                    .col(ColumnDef::new(AuditLogs::RequestId).text().null())
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [
            ("idx_audit_logs_at", vec![AuditLogs::At]),
            (
                "idx_audit_logs_object",
                vec![AuditLogs::ObjectType, AuditLogs::ObjectId, AuditLogs::At],
            ),
            (
                "idx_audit_logs_team",
                vec![AuditLogs::TeamId, AuditLogs::At],
            ),
        ] {
            let mut index = Index::create();
            index.name(name).table(AuditLogs::Table);
            for col in cols {
                index.col(col);
            }
            manager.create_index(index.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AuditLogs::Table).to_owned())
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("idx_usage_logs_started")
                    .table(UsageLogs::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("idx_virtual_keys_previous_hash")
                    .table(VirtualKeys::Table)
                    .to_owned(),
            )
            .await?;
        for col in [VirtualKeys::GraceUntil, VirtualKeys::PreviousKeyHash] {
            manager
                .alter_table(
                    Table::alter()
                        .table(VirtualKeys::Table)
                        .drop_column(col)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
