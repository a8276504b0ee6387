//! Initial schema: teams, virtual keys, JWT key mappings and usage logs.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Teams {
    Table,
    Id,
    TeamAlias,
    Models,
    MaxBudget,
    BudgetDuration,
    BudgetResetAt,
    Spend,
    TpmLimit,
    RpmLimit,
    MaxParallelRequests,
    Blocked,
    Metadata,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum VirtualKeys {
    Table,
    Id,
    KeyHash,
    KeyName,
    KeyAlias,
    TeamId,
    UserId,
    OrgId,
    Models,
    AllowedRoutes,
    MaxBudget,
    BudgetDuration,
    BudgetResetAt,
    Spend,
    TpmLimit,
    RpmLimit,
    MaxParallelRequests,
    Expires,
    Blocked,
    Metadata,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum JwtKeyMappings {
    Table,
    Id,
    JwtIssuer,
    JwtClaimName,
    JwtClaimValue,
    KeyId,
    Description,
    IsActive,
    CreatedAt,
    UpdatedAt,
    CreatedBy,
    UpdatedBy,
}

#[derive(DeriveIden)]
enum UsageLogs {
    Table,
    Id,
    RequestId,
    KeyId,
    TeamId,
    UserId,
    Model,
    Route,
    PromptTokens,
    CompletionTokens,
    Spend,
    Status,
    HttpStatus,
    StartedAt,
    DurationMs,
}

fn text(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().not_null().to_owned()
}

fn text_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().null().to_owned()
}

fn timestamp(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

fn timestamp_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .null()
        .to_owned()
}

fn big_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().null().to_owned()
}

fn spend(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .double()
        .not_null()
        .default(0.0)
        .to_owned()
}

fn flag(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .boolean()
        .not_null()
        .default(false)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Teams::Table)
                    .col(text(Teams::Id).primary_key())
                    .col(text_null(Teams::TeamAlias))
                    .col(text(Teams::Models))
                    .col(ColumnDef::new(Teams::MaxBudget).double().null())
                    .col(text_null(Teams::BudgetDuration))
                    .col(timestamp_null(Teams::BudgetResetAt))
                    .col(spend(Teams::Spend))
                    .col(big_null(Teams::TpmLimit))
                    .col(big_null(Teams::RpmLimit))
                    .col(big_null(Teams::MaxParallelRequests))
                    .col(flag(Teams::Blocked))
                    .col(text(Teams::Metadata))
                    .col(timestamp(Teams::CreatedAt))
                    .col(timestamp(Teams::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(VirtualKeys::Table)
                    .col(text(VirtualKeys::Id).primary_key())
                    .col(text(VirtualKeys::KeyHash).unique_key())
                    .col(text(VirtualKeys::KeyName))
                    .col(text_null(VirtualKeys::KeyAlias))
                    .col(text_null(VirtualKeys::TeamId))
                    .col(text_null(VirtualKeys::UserId))
                    .col(text_null(VirtualKeys::OrgId))
                    .col(text(VirtualKeys::Models))
                    .col(text(VirtualKeys::AllowedRoutes))
                    .col(ColumnDef::new(VirtualKeys::MaxBudget).double().null())
                    .col(text_null(VirtualKeys::BudgetDuration))
                    .col(timestamp_null(VirtualKeys::BudgetResetAt))
                    .col(spend(VirtualKeys::Spend))
                    .col(big_null(VirtualKeys::TpmLimit))
                    .col(big_null(VirtualKeys::RpmLimit))
                    .col(big_null(VirtualKeys::MaxParallelRequests))
                    .col(timestamp_null(VirtualKeys::Expires))
                    .col(flag(VirtualKeys::Blocked))
                    .col(text(VirtualKeys::Metadata))
                    .col(text_null(VirtualKeys::CreatedBy))
                    .col(timestamp(VirtualKeys::CreatedAt))
                    .col(timestamp(VirtualKeys::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_virtual_keys_team")
                            .from(VirtualKeys::Table, VirtualKeys::TeamId)
                            .to(Teams::Table, Teams::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_virtual_keys_team")
                    .table(VirtualKeys::Table)
                    .col(VirtualKeys::TeamId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(JwtKeyMappings::Table)
                    .col(text(JwtKeyMappings::Id).primary_key())
                    .col(text(JwtKeyMappings::JwtIssuer))
                    .col(text(JwtKeyMappings::JwtClaimName))
                    .col(text(JwtKeyMappings::JwtClaimValue))
                    .col(text(JwtKeyMappings::KeyId))
                    .col(text_null(JwtKeyMappings::Description))
                    .col(flag(JwtKeyMappings::IsActive))
                    .col(timestamp(JwtKeyMappings::CreatedAt))
                    .col(timestamp(JwtKeyMappings::UpdatedAt))
                    .col(text_null(JwtKeyMappings::CreatedBy))
                    .col(text_null(JwtKeyMappings::UpdatedBy))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_jwt_key_mappings_key")
                            .from(JwtKeyMappings::Table, JwtKeyMappings::KeyId)
                            .to(VirtualKeys::Table, VirtualKeys::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_jwt_key_mappings_identity")
                    .table(JwtKeyMappings::Table)
                    .col(JwtKeyMappings::JwtIssuer)
                    .col(JwtKeyMappings::JwtClaimName)
                    .col(JwtKeyMappings::JwtClaimValue)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_jwt_key_mappings_key")
                    .table(JwtKeyMappings::Table)
                    .col(JwtKeyMappings::KeyId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(UsageLogs::Table)
                    .col(text(UsageLogs::Id).primary_key())
                    .col(text(UsageLogs::RequestId))
                    .col(text_null(UsageLogs::KeyId))
                    .col(text_null(UsageLogs::TeamId))
                    .col(text_null(UsageLogs::UserId))
                    .col(text_null(UsageLogs::Model))
                    .col(text(UsageLogs::Route))
                    .col(
                        ColumnDef::new(UsageLogs::PromptTokens)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(UsageLogs::CompletionTokens)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(UsageLogs::Spend).double().not_null())
                    .col(text(UsageLogs::Status))
                    .col(ColumnDef::new(UsageLogs::HttpStatus).integer().not_null())
                    .col(timestamp(UsageLogs::StartedAt))
                    .col(
                        ColumnDef::new(UsageLogs::DurationMs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("idx_usage_logs_key", UsageLogs::KeyId),
            ("idx_usage_logs_team", UsageLogs::TeamId),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(UsageLogs::Table)
                        .col(col)
                        .col(UsageLogs::StartedAt)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            UsageLogs::Table.into_iden(),
            JwtKeyMappings::Table.into_iden(),
            VirtualKeys::Table.into_iden(),
            Teams::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
